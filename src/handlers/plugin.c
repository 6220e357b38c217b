/*
 * handlers/plugin.c: C plugins (tgwebhookd.h is their whole API).
 *
 * `plugin = /path/x.so` is loaded with dlopen(RTLD_NOW | RTLD_LOCAL): a
 * missing symbol fails at start, not at the first update.  The file must
 * be owned by root or the daemon's user and not be writable by group or
 * others, nor its directories by others (util.h's file_check_trusted:
 * whoever can change it runs code as the daemon).  With euid 0 nothing is
 * loaded unless plugin_allow_root() was called (plugin.h): `tgwebhookd
 * -t` as root and a start as root checking a bad configuration run no
 * plugin code.  The daemon exports exactly the tgw_* functions (linked
 * with --dynamic-list=src/tgwebhookd.sym), so a plugin resolves them
 * against the running binary.
 *
 * A reload that names an unchanged file shares the library already mapped
 * and gets a new instance from init(); the old instance is cleaned up with
 * the old table.  A file rebuilt since it was loaded is new code: dlopen
 * would hand back the old library by its name, so the new file is loaded
 * from a private copy (a memfd, opened as /proc/self/fd/N: the name is
 * unique while the copy is mapped, as the fd stays open until then).
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calls.h"
#include "handler.h"
#include "plugin.h"
#include "log.h"
#include "state.h"
#include "tgwebhookd.h"
#include "update.h"
#include "util.h"

/* A shared object as loaded: the file it was (its identity then), and
 * the fd of its private copy, if it was loaded from one. */
struct lib {
	char *path;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
	void *dl;
	int copy;		/* memfd, or -1: loaded by path */
	unsigned refs;
	struct lib *next;
};

static pthread_mutex_t libs_mu = PTHREAD_MUTEX_INITIALIZER;
static struct lib *libs;

struct plugin {
	char *name;
	char *path;
	struct lib *lib;
	const struct tgw_plugin *api;
	void *state;
	bool inited;
	bool state_io;		/* state_io = on */
};

/* What handle() sees: the update, its conversation's state as read
 * (state_io; data NULL: none kept), and where its calls go. */
struct tgw_update {
	const struct update *u;
	const char *handler;
	char *state_name;
	json_t *state_data;
};

struct tgw_reply {
	const struct update *u;
	json_t *calls;
	char *err;
	size_t errlen;
	struct handler_state *state;	/* NULL: no state to set */
	char state_err[160];	/* why tgw_reply_state() failed ("": it
				 * did not): the update fails too */
};

/* Set once, before any thread, by a daemon that stays root. */
static bool allow_root;

/* The handler whose plugin code runs on this thread, for tgw_log(). */
static _Thread_local const char *current;

/* The daemon's keys: never the plugin's options. */
static const char *const match_keys[] = { "plugin", "updates", "commands",
	"text", "state", "state_io", NULL };

static bool
is_match_key(const char *key)
{
	for (size_t i = 0; match_keys[i] != NULL; i++)
		if (strcmp(match_keys[i], key) == 0)
			return true;
	return false;
}

static bool
same_file(const struct lib *l, const char *path, const struct stat *st)
{
	return strcmp(l->path, path) == 0 && l->dev == st->st_dev &&
	    l->ino == st->st_ino && l->size == st->st_size &&
	    l->mtime.tv_sec == st->st_mtim.tv_sec &&
	    l->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

void
plugin_allow_root(void)
{
	allow_root = true;
}

/* Opens the .so, which may only be changed by root or uid. */
static int
open_checked(const char *path, uid_t uid, struct stat *st, char *err,
    size_t errlen)
{
	int fd;

	if (path[0] != '/') {
		errf(err, errlen, "needs an absolute path to the .so");
		return -1;
	}
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1 ||
	    fstat(fd, st) == -1) {
		errf(err, errlen, "%s: %s", path, strerror(errno));
		if (fd != -1)
			close(fd);
		return -1;
	}
	if (file_check_trusted(path, fd, uid, err, errlen) == -1) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Copies the file open on fd into a memfd; -1 with err on failure. */
static int
private_copy(int fd, const char *path, off_t size, char *err, size_t errlen)
{
	int copy = memfd_create("tgwebhookd-plugin", MFD_CLOEXEC);
	off_t off = 0;

	if (copy == -1) {
		errf(err, errlen, "%s: memfd_create: %s", path, strerror(errno));
		return -1;
	}
	while (off < size) {
		ssize_t n = sendfile(copy, fd, &off, (size_t)(size - off));

		if (n <= 0) {
			errf(err, errlen, "%s: copying: %s", path, n == 0 ?
			    "the file shrank" : strerror(errno));
			close(copy);
			return -1;
		}
	}
	return copy;
}

/*
 * The library for the file at path: the one loaded already if the file
 * is unchanged since, else a new load (from a private copy if a library
 * of that path is still mapped).  NULL with err on failure.
 */
static struct lib *
lib_get(const char *path, uid_t uid, char *err, size_t errlen)
{
	struct stat st;
	struct lib *l;
	bool mapped = false;
	char name[32];
	int fd;

	if ((fd = open_checked(path, uid, &st, err, errlen)) == -1)
		return NULL;
	pthread_mutex_lock(&libs_mu);
	for (l = libs; l != NULL; l = l->next) {
		if (same_file(l, path, &st)) {
			l->refs++;
			goto out;
		}
		mapped = mapped || strcmp(l->path, path) == 0;
	}
	if (!mapped) {
		/* Unloaded by us, but still mapped (dlclose() may keep a
		 * library): dlopen() would return that one. */
		void *old = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);

		if (old != NULL) {
			dlclose(old);
			mapped = true;
		}
	}
	l = xcalloc(1, sizeof(*l));
	l->copy = -1;
	if (mapped) {
		log_info("plugin %s changed since it was loaded: loading the "
		    "new file", path);
		if ((l->copy = private_copy(fd, path, st.st_size, err,
		    errlen)) == -1)
			goto fail;
		snprintf(name, sizeof(name), "/proc/self/fd/%d", l->copy);
	}
	if ((l->dl = dlopen(mapped ? name : path, RTLD_NOW | RTLD_LOCAL)) ==
	    NULL) {
		errf(err, errlen, "cannot load: %s", dlerror());
		goto fail;
	}
	l->path = xstrdup(path);
	l->dev = st.st_dev;
	l->ino = st.st_ino;
	l->size = st.st_size;
	l->mtime = st.st_mtim;
	l->refs = 1;
	l->next = libs;
	libs = l;
out:
	pthread_mutex_unlock(&libs_mu);
	close(fd);
	return l;
fail:
	pthread_mutex_unlock(&libs_mu);
	if (l->copy != -1)
		close(l->copy);
	free(l);
	close(fd);
	return NULL;
}

static void
lib_put(struct lib *l)
{
	struct lib **pp;

	if (l == NULL)
		return;
	pthread_mutex_lock(&libs_mu);
	if (--l->refs > 0) {
		pthread_mutex_unlock(&libs_mu);
		return;
	}
	for (pp = &libs; *pp != l; pp = &(*pp)->next)
		;
	*pp = l->next;
	dlclose(l->dl);
	if (l->copy != -1) {
		char name[32];
		void *still;

		/* A library dlclose() could not unmap (it holds unique
		 * symbols, say) keeps its fd, so that no later copy is
		 * opened under the same name. */
		snprintf(name, sizeof(name), "/proc/self/fd/%d", l->copy);
		if ((still = dlopen(name, RTLD_LAZY | RTLD_NOLOAD)) != NULL)
			dlclose(still);
		else
			close(l->copy);
	}
	pthread_mutex_unlock(&libs_mu);
	free(l->path);
	free(l);
}

static void
plugin_destroy(void *arg)
{
	struct plugin *p = arg;

	if (p == NULL)
		return;
	if (p->inited && p->api->cleanup != NULL) {
		current = p->name;
		p->api->cleanup(p->state);
		current = NULL;
	}
	lib_put(p->lib);
	free(p->name);
	free(p->path);
	free(p);
}

/* Reports a message from init() at the line of the option it names
 * ("KEY: ..."), else at the plugin key. */
static void
report_init(struct diag *d, const struct config *c, int line,
    const struct tgw_option *opts, size_t n, const char *path,
    const char *msg)
{
	for (size_t i = 0; i < n; i++) {
		size_t k = strlen(opts[i].key);

		if (strncmp(msg, opts[i].key, k) == 0 && msg[k] == ':') {
			diag_add(d, c->file, opts[i].line, opts[i].key, "%s",
			    msg + k + 1 + (msg[k + 1] == ' '));
			return;
		}
	}
	diag_add(d, c->file, line, "plugin", "%s: %s", path, msg);
}

/* What can be known of a plugin file without running any of it: its
 * owner and modes, and that it is an ELF object. */
static int
check_unloaded(const char *path, uid_t uid, char *err, size_t errlen)
{
	struct stat st;
	unsigned char magic[4];
	int fd;

	if ((fd = open_checked(path, uid, &st, err, errlen)) == -1)
		return -1;
	if (pread(fd, magic, sizeof(magic), 0) != (ssize_t)sizeof(magic) ||
	    memcmp(magic, "\177ELF", 4) != 0) {
		errf(err, errlen, "%s: not an ELF shared object: build it with "
		    "cc -shared -fPIC", path);
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

static void *
plugin_create(const struct conf_handler *h, const struct config *c,
    struct diag *d)
{
	struct plugin *p = xcalloc(1, sizeof(*p));
	struct tgw_option *opts = NULL;
	size_t n = 0;
	char err[512] = "";
	int line;

	p->name = xstrdup(h->name);
	p->path = xstrdup(handler_conf_get(h, "plugin", &line));
	switch (handler_conf_state_io(h, c, d)) {
	case -1:
		goto fail;
	case 1:
		p->state_io = true;
		break;
	default:
		break;
	}
	if (geteuid() == 0 && !allow_root) {
		/* Checked, not loaded: a constructor would run as root. */
		if (check_unloaded(p->path, config_user_uid(c), err,
		    sizeof(err)) == -1) {
			diag_add(d, c->file, line, "plugin", "%s", err);
			goto fail;
		}
		return p;
	}
	if ((p->lib = lib_get(p->path, config_user_uid(c), err,
	    sizeof(err))) == NULL) {
		diag_add(d, c->file, line, "plugin", "%s", err);
		goto fail;
	}
	if ((p->api = dlsym(p->lib->dl, "tgw_plugin")) == NULL) {
		diag_add(d, c->file, line, "plugin", "%s defines no "
		    "`tgw_plugin`: is it a tgwebhookd plugin (TGW_PLUGIN() in "
		    "tgwebhookd.h)?", p->path);
		goto fail;
	}
	if (p->api->abi != TGW_ABI_VERSION) {
		diag_add(d, c->file, line, "plugin", "%s was built for plugin "
		    "ABI %u, this tgwebhookd speaks ABI %u: rebuild it "
		    "against this version's tgwebhookd.h", p->path,
		    p->api->abi, TGW_ABI_VERSION);
		goto fail;
	}
	if (p->api->handle == NULL) {
		diag_add(d, c->file, line, "plugin", "%s: tgw_plugin has no "
		    "handle function", p->path);
		goto fail;
	}
	for (const struct conf_kv *kv = h->kv; kv != NULL; kv = kv->next)
		if (!is_match_key(kv->key))
			n++;
	opts = xcalloc(n + 1, sizeof(*opts));
	n = 0;
	for (const struct conf_kv *kv = h->kv; kv != NULL; kv = kv->next)
		if (!is_match_key(kv->key))
			opts[n++] = (struct tgw_option){ kv->key, kv->value,
			    kv->line };
	if (p->api->init == NULL) {
		if (n > 0) {
			diag_add(d, c->file, opts[0].line, opts[0].key,
			    "unknown key: this plugin takes no options");
			goto fail;
		}
	} else {
		current = p->name;
		if (p->api->init(&p->state, opts, n, err, sizeof(err)) != 0) {
			current = NULL;
			report_init(d, c, line, opts, n, p->path,
			    err[0] ? err : "init failed");
			goto fail;
		}
		current = NULL;
	}
	p->inited = true;
	free(opts);
	return p;
fail:
	free(opts);
	plugin_destroy(p);
	return NULL;
}

static bool
plugin_blocks(const void *arg)
{
	const struct plugin *p = arg;

	return p->api != NULL && (p->api->flags & TGW_PLUGIN_BLOCKING) != 0;
}

static int
plugin_run(void *arg, const struct handler_input *in, json_t *calls,
    char *err, size_t errlen)
{
	struct plugin *p = arg;
	struct handler_state *hs = p->state_io ? in->state : NULL;
	struct tgw_update tu = { in->u, p->name, NULL, NULL };
	struct tgw_reply r = { in->u, calls, err, errlen, hs, "" };
	int rc;

	err[0] = '\0';
	if (p->api == NULL) {
		errf(err, errlen, "plugin %s was checked, not loaded (as root)",
		    p->path);
		return -1;
	}
	if (hs != NULL) {
		/* a snapshot: tgw_reply_state() may replace hs's */
		tu.state_name = hs->name != NULL ? xstrdup(hs->name) : NULL;
		tu.state_data = json_incref(hs->data);
	}
	current = p->name;
	rc = p->api->handle(p->state, &tu, &r);
	current = NULL;
	free(tu.state_name);
	json_decref(tu.state_data);
	if (rc == 0 && r.state_err[0] != '\0') {
		errf(err, errlen, "tgw_reply_state(): %s", r.state_err);
		rc = -1;
	}
	if (rc != 0) {
		if (err[0] == '\0')
			errf(err, errlen, "plugin failed");
		json_array_clear(calls);	/* nothing is sent */
		return -1;
	}
	return 0;
}

const struct handler_kind handler_plugin = {
	.name = "plugin",
	.keys = NULL,		/* every other key is an option */
	.blocking = false,
	.blocks = plugin_blocks,
	.create = plugin_create,
	.run = plugin_run,
	.destroy = plugin_destroy,
};

/* ---- tgwebhookd.h ---- */

const json_t *
tgw_update_json(const struct tgw_update *u)
{
	return u->u->root;
}

int64_t
tgw_update_id(const struct tgw_update *u)
{
	return u->u->id;
}

const char *
tgw_update_type(const struct tgw_update *u)
{
	return u->u->type;
}

const json_t *
tgw_update_object(const struct tgw_update *u)
{
	return u->u->obj;
}

bool
tgw_update_chat_id(const struct tgw_update *u, int64_t *chat_id)
{
	if (u->u->has_chat && chat_id != NULL)
		*chat_id = u->u->chat_id;
	return u->u->has_chat;
}

bool
tgw_update_from_id(const struct tgw_update *u, int64_t *user_id)
{
	if (u->u->has_from && user_id != NULL)
		*user_id = u->u->from_id;
	return u->u->has_from;
}

const char *
tgw_update_text(const struct tgw_update *u, size_t *len)
{
	if (len != NULL)
		*len = u->u->text != NULL ? u->u->text_len : 0;
	return u->u->text;
}

const char *
tgw_update_command(const struct tgw_update *u)
{
	return u->u->command;
}

const char *
tgw_update_args(const struct tgw_update *u)
{
	return u->u->args != NULL ? u->u->args : "";
}

const char *
tgw_handler_name(const struct tgw_update *u)
{
	return u->handler;
}

int
tgw_reply_call(struct tgw_reply *r, const char *method, json_t *params)
{
	json_t *call;
	char err[256];

	if (params != NULL && !json_is_object(params)) {
		json_decref(params);
		tgw_log(TGW_LOG_WARN, "update %" PRId64 ": tgw_reply_call(%s): "
		    "params is not a JSON object", r->u->id, method);
		return -1;
	}
	if (json_array_size(r->calls) >= CALLS_MAX) {
		json_decref(params);
		tgw_log(TGW_LOG_WARN, "update %" PRId64 ": tgw_reply_call(%s): "
		    "already %d calls for this update", r->u->id, method,
		    CALLS_MAX);
		return -1;
	}
	call = params != NULL ? params : json_object();
	json_object_set_new(call, "method", json_string(method != NULL ?
	    method : ""));
	if (calls_check(call, err, sizeof(err)) == -1) {
		json_decref(call);
		tgw_log(TGW_LOG_WARN, "update %" PRId64 ": tgw_reply_call: %s",
		    r->u->id, err);
		return -1;
	}
	json_array_append_new(r->calls, call);
	return 0;
}

int
tgw_reply_text(struct tgw_reply *r, const char *text)
{
	json_t *params, *t;

	if (!r->u->has_chat) {
		tgw_log(TGW_LOG_WARN, "update %" PRId64 ": tgw_reply_text: a "
		    "%s has no chat to answer in", r->u->id, r->u->type);
		return -1;
	}
	/* not json_pack(): reading its format cost as much as the rest */
	if ((t = json_string(text != NULL ? text : "")) == NULL) {
		tgw_log(TGW_LOG_WARN, "update %" PRId64 ": tgw_reply_text: "
		    "the text is not UTF-8", r->u->id);
		return -1;
	}
	params = json_object();
	json_object_set_new(params, "chat_id",
	    json_integer((json_int_t)r->u->chat_id));
	json_object_set_new(params, "text", t);
	return tgw_reply_call(r, "sendMessage", params);
}

const char *
tgw_state_name(const struct tgw_update *u)
{
	return u->state_name;
}

const json_t *
tgw_state_data(const struct tgw_update *u)
{
	return u->state_data;
}

int
tgw_reply_state(struct tgw_reply *r, const char *name, json_t *data)
{
	const char *why = NULL;
	char bad[128];

	if (r->state == NULL)
		why = "this update has no conversation state (it needs "
		    "state_io = on, and a chat or sender [state] state_scope "
		    "keys by)";
	else if (name != NULL && !state_name_valid(name))
		why = "the name is not 1-64 of A-Z a-z 0-9 _ (NULL: none)";
	else if (data != NULL && state_data_check(data, bad, sizeof(bad)) ==
	    -1)
		why = bad;
	if (why != NULL) {
		json_decref(data);
		errf(r->state_err, sizeof(r->state_err), "%s", why);
		tgw_log(TGW_LOG_WARN, "update %" PRId64 ": tgw_reply_state: %s",
		    r->u->id, why);
		return -1;
	}
	free(r->state->name);
	r->state->name = name != NULL ? xstrdup(name) : NULL;
	json_decref(r->state->data);
	if (name == NULL && data != NULL) {
		json_decref(data);	/* no state has no data */
		data = NULL;
	}
	r->state->data = data != NULL ? data : json_object();
	r->state->changed = true;
	return 0;
}

void
tgw_reply_fail(struct tgw_reply *r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->err, r->errlen, fmt, ap);
	va_end(ap);
}

void
tgw_log(enum tgw_log_level level, const char *fmt, ...)
{
	char msg[2048];
	va_list ap;

	if (level < TGW_LOG_ERR)
		level = TGW_LOG_ERR;
	if (level > TGW_LOG_DEBUG)
		level = TGW_LOG_DEBUG;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_msg((enum log_level)level, "handler %s: %s",
	    current != NULL ? current : "(plugin)", msg);
}
