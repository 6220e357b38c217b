/*
 * tgwebhookd.h: the whole API of a tgwebhookd plugin.
 *
 * A plugin is a shared object named in the configuration:
 *
 *	[handler.echo]
 *	plugin = /usr/local/lib/tgwebhookd/echo.so
 *	greeting = Hello		; any other key is an option
 *
 * It defines one symbol, `tgw_plugin`, with TGW_PLUGIN() below.  The
 * daemon loads it at start (and at SIGHUP when the path is new or the
 * file was rebuilt), checks its ABI version, calls init() with the
 * section's options, then calls
 * handle() for every update the handler's match rules (updates, commands,
 * text) select.  cleanup() is called when the handler table that owns the
 * instance is dropped: at exit, or after a reload once no update still
 * runs in it.
 *
 * Threading.  handle() may run on several threads at once, for the same
 * instance, and a reload may create a second instance (a second init())
 * while the first still handles updates.  Keep state in the pointer init()
 * returns, never in globals, and guard what handle() changes.  Unless the
 * plugin sets TGW_PLUGIN_BLOCKING, handle() runs on a server thread and
 * must be quick (no network, no disk waits): the next request on that
 * thread waits for it.  With TGW_PLUGIN_BLOCKING it runs on a handler
 * thread, and an update that takes longer than reply_deadline gets its
 * calls sent as follow-ups.
 *
 * Replies.  Every call the plugin makes on its tgw_reply is a Bot API
 * call: the first one goes back inline in the webhook answer when that is
 * allowed (not get*, and only one), the rest are queued in the durable
 * outbox and sent within Telegram's rate limits, in order, with retries,
 * exactly as for exec handlers.  Nothing is sent if handle() fails: the
 * update becomes a dead letter with the plugin's message (tgwebhookd
 * --outbox lists it).
 *
 * Everything the plugin is given (the update, its JSON, strings) is lent
 * for the duration of the call and read-only.  JSON is jansson's json_t;
 * build with `pkg-config --cflags --libs tgwebhookd`, which brings
 * jansson's flags, and link with -shared -fPIC.
 *
 * Conversation state (TGW_ABI_MINOR 1).  With `state_io = on` in the
 * handler's section (a key the daemon reads; it is not passed to init()),
 * tgw_state_name() and tgw_state_data() read the conversation's state as
 * it was when the update's turn came, and tgw_reply_state() sets the new
 * one, committed with the update's calls in one transaction (such calls
 * are then all follow-ups, none inline).  Without state_io the reads
 * return NULL and tgw_reply_state() fails.
 *
 * ABI.  TGW_ABI_VERSION changes whenever a structure or a function
 * signature below changes; a plugin built for another version is refused
 * at load with a message saying to rebuild it.  TGW_ABI_MINOR counts
 * compatible additions (new functions): a plugin of an older minor
 * version loads unchanged; one that calls a function of a newer minor
 * version than the daemon's is refused at load (dlopen names the missing
 * symbol).  Test for it at build time: #if TGW_ABI_MINOR >= 1.
 */
#ifndef TGWEBHOOKD_H
#define TGWEBHOOKD_H

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TGW_ABI_VERSION 1
#define TGW_ABI_MINOR 1

/* The update being handled (opaque). */
struct tgw_update;
/* Where the plugin's calls go (opaque). */
struct tgw_reply;

/* One option: a key of the handler's section other than plugin, updates,
 * commands and text, with its value. */
struct tgw_option {
	const char *key;
	const char *value;
	int line;		/* its line in the configuration file */
};

/* flags */
#define TGW_PLUGIN_BLOCKING 0x1	/* handle() may wait: run it on a handler
				 * thread, not a server thread */

struct tgw_plugin {
	unsigned abi;		/* TGW_ABI_VERSION, set by TGW_PLUGIN() */
	unsigned flags;
	/* Makes an instance from the options; *state is handed to handle()
	 * and cleanup().  Returns 0, or -1 with a message in err (start it
	 * with "KEY: " to point the user at that option's line).  May be
	 * NULL: no state, and every option is refused as unknown. */
	int (*init)(void **state, const struct tgw_option *opts, size_t n,
	    char *err, size_t errlen);
	/* Handles one update: 0, or -1 after tgw_reply_fail() (or with no
	 * message: "failed"). */
	int (*handle)(void *state, const struct tgw_update *u,
	    struct tgw_reply *r);
	/* Frees the instance, and stops anything it started (a thread): the
	 * library may be unloaded right after.  May be NULL. */
	void (*cleanup)(void *state);
};

/* Defines the plugin:  TGW_PLUGIN(0, my_init, my_handle, my_cleanup);
 * (exported even when built with -fvisibility=hidden, and with C linkage
 * from C++). */
#ifdef __cplusplus
#define TGW_PLUGIN_LINKAGE extern "C"
#else
#define TGW_PLUGIN_LINKAGE
#endif
#define TGW_PLUGIN(flags_, init_, handle_, cleanup_)			\
	TGW_PLUGIN_LINKAGE __attribute__((visibility("default")))	\
	const struct tgw_plugin tgw_plugin = {				\
		TGW_ABI_VERSION, (flags_), (init_), (handle_), (cleanup_) }

/* ---- The update (all lent, valid during handle()) ---- */

/* The whole Update as Telegram sent it. */
const json_t *tgw_update_json(const struct tgw_update *u);
int64_t tgw_update_id(const struct tgw_update *u);
/* "message", "callback_query", ... */
const char *tgw_update_type(const struct tgw_update *u);
/* The object of that type (the Message, the CallbackQuery, ...). */
const json_t *tgw_update_object(const struct tgw_update *u);
/* The chat the update is in; false if it has none (inline queries). */
bool tgw_update_chat_id(const struct tgw_update *u, int64_t *chat_id);
/* The user it comes from; false if none (channel posts). */
bool tgw_update_from_id(const struct tgw_update *u, int64_t *user_id);
/* The message text or caption, callback data or inline query, or a rich
 * message's text (its blocks' text, a line per block); NULL if none.
 * *len (if not NULL) gets its length in bytes. */
const char *tgw_update_text(const struct tgw_update *u, size_t *len);
/* The bot command without '/' and without @botname ("start"), or NULL. */
const char *tgw_update_command(const struct tgw_update *u);
/* What follows the command, trimmed ("" if nothing). */
const char *tgw_update_args(const struct tgw_update *u);
/* The handler's name (the NAME of [handler.NAME]). */
const char *tgw_handler_name(const struct tgw_update *u);

/* ---- Replies ---- */

/* Makes a Bot API call: method ("sendMessage") with params (a JSON object
 * or NULL; the reference is always taken, even on failure).  Returns 0,
 * or -1 if the method is not a method name, params is not an object, or
 * the update already made 1000 calls (those past [outbox]
 * max_calls_per_update, 100 by default, are kept as dead letters). */
int tgw_reply_call(struct tgw_reply *r, const char *method, json_t *params);
/* sendMessage with text to the update's chat (-1 if it has none). */
int tgw_reply_text(struct tgw_reply *r, const char *text);
/* Says why handle() is about to return -1 (kept for the dead letter and
 * the log). */
void tgw_reply_fail(struct tgw_reply *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- Conversation state (TGW_ABI_MINOR 1; needs state_io = on) ---- */

/* The conversation's state name, or NULL when it has none (or the update
 * has no conversation state). */
const char *tgw_state_name(const struct tgw_update *u);
/* Its data, a JSON object ({} when there is none); NULL when the update
 * has no conversation state: state_io is off, or the update has nothing
 * [state] state_scope keys by.  What was read stays as it was when
 * tgw_reply_state() sets a new state. */
const json_t *tgw_state_data(const struct tgw_update *u);
/* Sets the conversation's new state: name (1-64 of A-Z a-z 0-9 _), or
 * NULL for none (its data cleared too); data a JSON object or NULL ({});
 * the reference is always taken.  The last call wins.  Its data is at
 * most 64 KiB as JSON.  Returns 0, or -1 when the update has no
 * conversation state, the name is not a name or data is not an object:
 * then the update fails (a dead letter, nothing sent) whatever handle()
 * returns. */
int tgw_reply_state(struct tgw_reply *r, const char *name, json_t *data);

/* ---- Logging (to the daemon's log, prefixed with the handler name) ---- */

enum tgw_log_level {
	TGW_LOG_ERR = 3,
	TGW_LOG_WARN = 4,
	TGW_LOG_NOTICE = 5,
	TGW_LOG_INFO = 6,
	TGW_LOG_DEBUG = 7
};

void tgw_log(enum tgw_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif

#endif
