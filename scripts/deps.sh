#!/bin/sh
# Install the Debian packages tgwebhookd needs to build and test, but only
# those missing: a machine that already has them is left alone, and no
# network is touched.  Run by `make deps` (and so by `make test` and
# `make demo`).
set -eu
# tools installed to sbin count as present for a user whose PATH lacks it
PATH=$PATH:/usr/sbin:/sbin

# pkg-config module -> Debian package
libs="libmicrohttpd:libmicrohttpd-dev gnutls:libgnutls28-dev openssl:libssl-dev jansson:libjansson-dev
libcurl:libcurl4-openssl-dev inih:libinih-dev sqlite3:libsqlite3-dev
cmocka:libcmocka-dev libpcre2-8:libpcre2-dev libpq:libpq-dev"
# command -> Debian package
cmds="pkg-config:pkg-config cc:gcc g++:g++ make:make python3:python3 openssl:openssl
curl:curl clang:clang valgrind:valgrind prlimit:util-linux unshare:util-linux
mount:mount mkfs.ext4:e2fsprogs promtool:prometheus
dpkg-buildpackage:dpkg-dev dh:debhelper lintian:lintian"

need=""
for pair in $cmds; do
	command -v "${pair%%:*}" >/dev/null 2>&1 || need="$need ${pair#*:}"
done
if command -v pkg-config >/dev/null 2>&1; then
	for pair in $libs; do
		pkg-config --exists "${pair%%:*}" || need="$need ${pair#*:}"
	done
else
	for pair in $libs; do need="$need ${pair#*:}"; done
fi
# libcurl must be the OpenSSL build: the GnuTLS one has another .pc name
# clash and different TLS behaviour.
if command -v dpkg-query >/dev/null 2>&1 &&
    ! dpkg-query -W -f='${Status}' libcurl4-openssl-dev 2>/dev/null |
    grep -q 'ok installed'; then
	need="$need libcurl4-openssl-dev"
fi
# libFuzzer and the sanitizer runtimes for clang (make fuzz, make test)
if command -v dpkg-query >/dev/null 2>&1 &&
    ! dpkg-query -W -f='${Status}' libclang-rt-14-dev 2>/dev/null |
    grep -q 'ok installed'; then
	need="$need libclang-rt-14-dev"
fi
# the PostgreSQL server the store's tests start (tests/pgserver.py)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need="$need postgresql-15"
# the alert rules' tests read YAML (tests/integration/test_monitoring.py)
command -v python3 >/dev/null 2>&1 && python3 -c 'import yaml' 2>/dev/null ||
    need="$need python3-yaml"
# extra packages named on the command line (make bench): PACKAGE, or
# COMMAND:PACKAGE when having the command is enough (node from elsewhere)
for extra in "$@"; do
	case $extra in
	*:*)	command -v "${extra%%:*}" >/dev/null 2>&1 ||
		    need="$need ${extra#*:}" ;;
	*)	dpkg-query -W -f='${Status}' "$extra" 2>/dev/null |
		    grep -q 'ok installed' || need="$need $extra" ;;
	esac
done

[ -z "$need" ] && exit 0
echo "deps: installing$need"
if [ "$(id -u)" -ne 0 ]; then
	SUDO=sudo
else
	SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Debian's prometheus package is here for promtool alone: its server must
# not start (or start at boot) on a developer's machine because of make
# test.  policy-rc.d (Debian policy 9.3.3) keeps services from starting
# during the install, unless the machine already has one of its own.
# So is postgresql-15's: the tests start a server of their own.
case " $need " in
*" prometheus "*|*" postgresql-15 "*)	quiet_services=1 ;;
*)			quiet_services= ;;
esac
policy=
if [ -n "$quiet_services" ] && [ ! -e /usr/sbin/policy-rc.d ]; then
	policy=/usr/sbin/policy-rc.d
	printf '#!/bin/sh\nexit 101\n' | $SUDO tee $policy >/dev/null
	$SUDO chmod 0755 $policy
fi
rc=0
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $need || rc=$?
[ -n "$policy" ] && $SUDO rm -f "$policy"
# ... nor at boot: installed just now, so its enablement is ours to undo
if [ -n "$quiet_services" ] && command -v systemctl >/dev/null 2>&1; then
	case " $need " in
	*" prometheus "*)	$SUDO systemctl disable prometheus.service \
				    >/dev/null 2>&1 || true ;;
	esac
	case " $need " in
	*" postgresql-15 "*)	$SUDO systemctl disable postgresql.service \
				    >/dev/null 2>&1 || true ;;
	esac
fi
exit $rc
