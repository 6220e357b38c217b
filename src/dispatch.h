/*
 * dispatch.h: the handler table.  Handlers are tried in file order; the
 * first whose rules all match (updates, commands, text) handles the
 * update.  Built once from the configuration; read-only afterwards, so
 * any thread may match against it.
 */
#ifndef TGW_DISPATCH_H
#define TGW_DISPATCH_H

#include "config.h"
#include "diag.h"
#include "handler.h"

/* A `text =` rule sees at most this many bytes of an update's text (a
 * message of 4096 characters, Telegram's limit, can be 16 KiB of UTF-8),
 * matched with a bound on its work (pattern.h): a match that reaches the
 * bound is no match, logged and counted. */
#define DISPATCH_TEXT_MAX 4096

struct pattern;
struct update;

struct dispatch;

struct handler {
	struct dispatch *table;	/* the table it belongs to */
	char *name;
	int line;
	const struct handler_kind *kind;
	void *state;
	bool blocking;		/* runs on a handler thread */
	/* match rules; each absent rule matches everything */
	char **updates;		/* type names */
	char **commands;	/* without the '/' */
	struct pattern *text;
	bool has_state;		/* a `state =` rule */
	char *want_state;	/* the state it wants; NULL: none */
};

/* Builds the table.  NULL if any handler section is wrong (all problems
 * in d, as FILE:LINE: key: ...). */
struct dispatch *dispatch_new(const struct config *c, struct diag *d);
/* Tables are reference-counted: a reload swaps in a new one while jobs
 * still run handlers of the old.  dispatch_free() drops the builder's
 * reference. */
void dispatch_free(struct dispatch *t);
/* Puts the table into service: starts what its handlers run (worker
 * processes).  Call once the daemon runs as its own user. */
void dispatch_start(struct dispatch *t);
void dispatch_ref(struct dispatch *t);
void dispatch_unref(struct dispatch *t);
/* The first handler matching u, or NULL.  username is the bot's, for
 * /command@username; may be NULL while unknown. */
const struct handler *dispatch_match(const struct dispatch *t,
    const struct update *u, const char *username);
/* True if a handler of t has a `state =` rule (matching then needs the
 * conversation's state: dispatch_match_state()) or changes the state
 * (set_state, save, a code handler's state_io = on).  False: t knows
 * nothing of state, and none is read for its updates. */
bool dispatch_uses_state(const struct dispatch *t);
/* The first handler matching u in state (NULL: none), or NULL.
 * dispatch_match() ignores `state =` rules: the runner matches again with
 * the state once it holds the conversation. */
const struct handler *dispatch_match_state(const struct dispatch *t,
    const struct update *u, const char *username, const char *state);
/* Runs h on in (for tests and non-blocking kinds). */
int dispatch_run(const struct handler *h, const struct handler_input *in,
    json_t *calls, char *err, size_t errlen);

#endif
