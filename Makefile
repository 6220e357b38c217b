# tgwebhookd: plain make, pkg-config for every library, -MMD dependencies.
#
#   make               build build/tgwebhookd
#   make test          install missing Debian packages, build, run every test
#   make demo          run the Hello Bot demo offline against the emulator
#   make test-sanitize the whole suite in an ASan+UBSan build (build-san/)
#   make install       PREFIX=/usr/local DESTDIR=
#   make deb           Debian packages in build/deb/ (debian/, scripts/deb.sh)

PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
SYSCONFDIR ?= /etc
LIBEXECDIR ?= $(PREFIX)/libexec
UNITDIR ?= /etc/systemd/system
MANDIR ?= $(PREFIX)/share/man
INCLUDEDIR ?= $(PREFIX)/include
LIBDIR ?= $(PREFIX)/lib
PLUGINDIR ?= $(LIBDIR)/tgwebhookd
CC ?= cc
WERROR ?=
SANITIZE ?=

VERSION := $(shell cat VERSION 2>/dev/null || echo 0.0.0)
PKGS := libmicrohttpd gnutls openssl jansson libcurl inih sqlite3 libpcre2-8 \
	libpq

ifneq ($(SANITIZE),)
BUILD ?= build-san
OPT := -O1 -g -fno-omit-frame-pointer -fsanitize=$(SANITIZE) \
	-fno-sanitize-recover=all
SANLD := -fsanitize=$(SANITIZE)
else
BUILD ?= build
OPT := -O2 -g -D_FORTIFY_SOURCE=2
SANLD :=
endif

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
	-Wpointer-arith -Wcast-qual -Wformat=2 -Wundef -Wvla -fno-common
ifeq ($(WERROR),1)
WARN += -Werror
endif

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)

CFLAGS_ALL := -std=c17 -D_GNU_SOURCE $(OPT) $(WARN) -fstack-protector-strong \
	-fPIE -MMD -MP -Isrc -DTGW_VERSION='"$(VERSION)"' $(PKG_CFLAGS) $(CFLAGS)
LDFLAGS_ALL := -pie -Wl,-z,relro,-z,now $(SANLD) $(LDFLAGS)
LIBS := $(PKG_LIBS) -lpthread

SRCS := $(wildcard src/*.c src/handlers/*.c)
LIB_SRCS := $(filter-out src/main.c,$(SRCS))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o)
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
# Example plugins: built as a user would, against src/tgwebhookd.h only.
PLUGIN_SRCS := $(wildcard examples/plugins/*.c)
PLUGINS := $(PLUGIN_SRCS:examples/plugins/%.c=$(BUILD)/plugins/%.so)
PLUGIN_CFLAGS := -std=c17 $(OPT) $(WARN) -fPIC -fvisibility=hidden \
	-Isrc $(shell pkg-config --cflags jansson 2>/dev/null) $(CFLAGS)

.PHONY: all deps test test-run test-sanitize demo demo-run clean install \
	uninstall bench bench-run fuzz fuzz-run deb

all: $(BUILD)/tgwebhookd $(PLUGINS)

deps:
	@scripts/deps.sh

# Fuzzing (clang's libFuzzer, ASan, UBSan): its own build directory.
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 3
FUZZ_DIR := build-fuzz
FUZZ_CC ?= clang
FUZZ_CFLAGS := -std=c17 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer \
	-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all \
	-MMD -MP -Isrc -DTGW_VERSION='"$(VERSION)"' $(PKG_CFLAGS)
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.c=$(FUZZ_DIR)/%)
FUZZ_LIB_OBJS := $(LIB_SRCS:%.c=$(FUZZ_DIR)/%.o)

# `make V=1` shows the commands.
ifeq ($(V),1)
Q :=
else
Q := @
endif

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  CC      $<"
	$(Q)$(CC) $(CFLAGS_ALL) -c -o $@ $<

$(BUILD)/libtgw.a: $(LIB_OBJS)
	@rm -f $@
	$(Q)ar rcs $@ $^

# The binary exports exactly the plugin API (src/tgwebhookd.sym).
$(BUILD)/tgwebhookd: $(BUILD)/src/main.o $(BUILD)/libtgw.a src/tgwebhookd.sym
	@[ "$(V)" = 1 ] || echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS_ALL) -Wl,--dynamic-list=src/tgwebhookd.sym -o $@ \
	    $(filter-out %.sym,$^) $(LIBS)

# Plugins; go-w: the daemon refuses a plugin others could change.
define plugin_recipe
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  PLUGIN  $@"
	$(Q)$(CC) $(PLUGIN_CFLAGS) -shared -Wl,-z,relro,-z,now -o $@ $< \
	    $(SANLD) $(shell pkg-config --libs jansson 2>/dev/null)
	@chmod go-w $@
endef

$(BUILD)/plugins/%.so: examples/plugins/%.c src/tgwebhookd.h
	$(plugin_recipe)

$(BUILD)/bench/%.so: bench/handlers/%.c src/tgwebhookd.h
	$(plugin_recipe)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(BUILD)/libtgw.a
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS_ALL) -Wl,--dynamic-list=src/tgwebhookd.sym -o $@ \
	    $^ $(LIBS) $(CMOCKA_LIBS)

.SECONDARY:

# `make test` and `make demo` first install what is missing, then re-enter
# make so that pkg-config sees the new packages.
test: deps
	@$(MAKE) --no-print-directory test-run

test-run: $(BUILD)/tgwebhookd $(PLUGINS) $(UNIT_BINS) $(if $(SANITIZE),,$(FUZZ_BINS))
	@BUILD=$(BUILD) TGW_SANITIZE=$(SANITIZE) \
	    FUZZ_SMOKE=$(if $(SANITIZE),0,$(FUZZ_SMOKE_SECONDS)) tests/run.sh

fuzz: deps
	@$(MAKE) --no-print-directory fuzz-run

fuzz-run: $(FUZZ_BINS)
	@tests/fuzz/run.sh $(FUZZ_SECONDS)

$(FUZZ_DIR)/%.o: %.c
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  FUZZCC  $<"
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB_OBJS)
	@[ "$(V)" = 1 ] || echo "  FUZZLD  $@"
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $^ $(LIBS)

test-sanitize: deps
	@$(MAKE) --no-print-directory SANITIZE=address,undefined test-run

demo: deps
	@$(MAKE) --no-print-directory demo-run

demo-run: $(BUILD)/tgwebhookd $(PLUGINS)
	@python3 tests/emulator/demo.py --daemon $(BUILD)/tgwebhookd \
	    --config conf/hello.conf

# Measurements, not tests (machines here are shared and noisy): figures
# go to the terminal; quote ratios measured in one run.
# The peers: nginx, python-telegram-bot 13 (Debian), grammY and Telegraf
# (npm, pinned by bench/peers/package-lock.json, into bench/peers/).
bench: deps
	@scripts/deps.sh nginx-light wrk node:nodejs npm:npm \
	    python3-python-telegram-bot
	@cd bench/peers && npm ci --no-audit --no-fund --loglevel=error || \
	    echo "bench: npm could not install grammY and Telegraf: they are skipped"
	@$(MAKE) --no-print-directory bench-run

# cluster_bench.py comes after webhook_bench.py, which writes RESULTS.md
# anew: it replaces only its own section of the file.
bench-run: $(BUILD)/tgwebhookd $(BUILD)/bench/hello.so $(BUILD)/bench/enqueue \
    $(BUILD)/bench/mhd_floor $(BUILD)/bench/update_cost \
    $(BUILD)/bench/followup.so
	@echo "== one update's own work (bench/update_cost.c)"
	@echo "| step | µs per update |"
	@echo "|---|---|"
	@$(BUILD)/bench/update_cost
	@echo
	@echo "== enqueue cost (bench/enqueue.c)"
	@$(BUILD)/bench/enqueue
	@echo
	@echo "== outbox delivery at Telegram's limits (bench/outbox_delivery.py)"
	@TGW_BUILD=$(BUILD) python3 bench/outbox_delivery.py
	@echo
	@echo "== the two sources: polling and webhook (bench/polling_bench.py)"
	@TGW_BUILD=$(BUILD) python3 bench/polling_bench.py
	@echo
	@echo "== a conversation behind a backlog: lanes (bench/outbox_lanes.py)"
	@TGW_BUILD=$(BUILD) python3 bench/outbox_lanes.py
	@echo
	@echo "== webhook load: tgwebhookd and nginx (bench/webhook_bench.py)"
	@TGW_BUILD=$(BUILD) python3 bench/webhook_bench.py
	@echo
	@echo "== several instances on one store (bench/cluster_bench.py)"
	@TGW_BUILD=$(BUILD) python3 bench/cluster_bench.py

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(BUILD)/libtgw.a
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

clean:
	rm -rf build build-san build-fuzz

install: $(BUILD)/tgwebhookd $(PLUGINS)
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(SYSCONFDIR)/tgwebhookd \
	    $(DESTDIR)$(LIBEXECDIR)/tgwebhookd $(DESTDIR)$(UNITDIR) \
	    $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5 \
	    $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR)/pkgconfig \
	    $(DESTDIR)$(PLUGINDIR)
	install -m 0755 $(BUILD)/tgwebhookd $(DESTDIR)$(SBINDIR)/tgwebhookd
	install -m 0644 src/tgwebhookd.h $(DESTDIR)$(INCLUDEDIR)/tgwebhookd.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@PLUGINDIR@|$(PLUGINDIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    tgwebhookd.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/tgwebhookd.pc
	install -m 0755 $(PLUGINS) $(DESTDIR)$(PLUGINDIR)/
	install -m 0644 man/tgwebhookd.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 man/tgwebhookd.conf.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0755 examples/echo-bot examples/about-bot \
	    examples/poll-worker $(DESTDIR)$(LIBEXECDIR)/tgwebhookd/
	sed -e 's|/usr/local/sbin|$(SBINDIR)|g' \
	    -e 's|/etc/tgwebhookd|$(SYSCONFDIR)/tgwebhookd|g' \
	    systemd/tgwebhookd.service > $(DESTDIR)$(UNITDIR)/tgwebhookd.service
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/tgwebhookd/tgwebhookd.conf ]; then \
	    echo "keeping the existing $(DESTDIR)$(SYSCONFDIR)/tgwebhookd/tgwebhookd.conf"; \
	else \
	    install -m 0644 conf/tgwebhookd.conf \
		$(DESTDIR)$(SYSCONFDIR)/tgwebhookd/tgwebhookd.conf; \
	fi

# Built in a copy of the tree: dpkg-buildpackage cleans the tree it runs
# in and writes to its parent directory.
DEBDIR ?= $(BUILD)/deb
deb: deps
	@scripts/deb.sh $(DEBDIR)

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/tgwebhookd $(DESTDIR)$(UNITDIR)/tgwebhookd.service \
	    $(DESTDIR)$(INCLUDEDIR)/tgwebhookd.h \
	    $(DESTDIR)$(LIBDIR)/pkgconfig/tgwebhookd.pc \
	    $(DESTDIR)$(MANDIR)/man8/tgwebhookd.8 \
	    $(DESTDIR)$(MANDIR)/man5/tgwebhookd.conf.5
	rm -rf $(DESTDIR)$(LIBEXECDIR)/tgwebhookd $(DESTDIR)$(PLUGINDIR)
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/tgwebhookd (configuration and token)"

-include $(SRCS:%.c=$(BUILD)/%.d) $(UNIT_SRCS:%.c=$(BUILD)/%.d) \
	$(wildcard $(BUILD)/bench/*.d) $(SRCS:%.c=$(FUZZ_DIR)/%.d)
