/*
 * handler.h: the one interface every handler kind implements: reply,
 * exec, plugin and worker.  A kind checks its own configuration keys, and
 * its run() turns one update into zero or more Bot API calls.  Kinds know
 * nothing of HTTP, the inline answer or the outbox: the runner (runner.h)
 * decides where each call goes.
 */
#ifndef TGW_HANDLER_H
#define TGW_HANDLER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "diag.h"

struct update;

/* The conversation's state as a handler sees and may change it (see
 * [state]); the runner commits a change with the handler's calls. */
struct handler_state {
	char *name;		/* NULL: no state */
	json_t *data;		/* a JSON object, never NULL */
	bool changed;		/* set by a handler that changed either */
};

/* What a handler gets: the parsed update and the body as received, and
 * its conversation's state (NULL when the update has no conversation key
 * or no store keeps states). */
struct handler_input {
	const struct update *u;
	const char *body;
	size_t len;
	struct handler_state *state;
};

struct handler_kind {
	const char *name;	/* "reply", "exec", ...: also its main key */
	/* its other keys, NULL-terminated; NULL: any key (plugin options) */
	const char *const *keys;
	/* true: run() may take long (a process), so it runs on a handler
	 * thread; false: run() is quick and runs on the server thread. */
	bool blocking;
	/* If not NULL, decides `blocking` per instance instead. */
	bool (*blocks)(const void *state);
	/* Builds the kind's state from its section.  Reports problems to d
	 * as FILE:LINE: key: ...; returns NULL if there were any. */
	void *(*create)(const struct conf_handler *h, const struct config *c,
	    struct diag *d);
	/* If not NULL: the table is going into service (create() only
	 * checks and prepares, so that `tgwebhookd -t` starts nothing).
	 * Called again for state a reload kept: must be idempotent. */
	void (*start)(void *state);
	/* Appends calls to `calls` (a JSON array).  0, or -1 with err when
	 * the handler failed: its update then becomes a dead letter. */
	int (*run)(void *state, const struct handler_input *in, json_t *calls,
	    char *err, size_t errlen);
	void (*destroy)(void *state);
};

extern const struct handler_kind handler_reply;
extern const struct handler_kind handler_exec;
extern const struct handler_kind handler_plugin;
extern const struct handler_kind handler_worker;

/* The value of key in h, or NULL; *line gets its line if not NULL. */
const char *handler_conf_get(const struct conf_handler *h, const char *key,
    int *line);
/* `state_io = on | off` of a code handler (exec, worker, plugin): 1 on
 * (it is given the conversation's state and may return a new one), 0
 * off or absent, -1 with the problem in d (d NULL: not reported). */
int handler_conf_state_io(const struct conf_handler *h,
    const struct config *c, struct diag *d);

#endif
