/*
 * handlers/reply.c: the no-code handler.  `reply = TEXT` sends TEXT to the
 * update's chat; `method` (default sendMessage) and `params` (a JSON
 * object merged into the call, whose string values may hold placeholders
 * too) shape the call.  With a conversation state ([state]),
 * `save = name: TEMPLATE` keeps the expansion in the state's data (read
 * back as {state.name}) and `set_state = NAME | none` moves the
 * conversation to another state.  Everything is compiled at start-up: running is a
 * template expansion and a few JSON sets, quick enough for the server
 * thread.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "calls.h"
#include "handler.h"
#include "state.h"
#include "template.h"
#include "update.h"
#include "util.h"

struct param {
	char *key;
	struct template *tmpl;	/* string values: expanded per update */
	json_t *value;		/* other values: copied as they are */
};

struct reply {
	struct template *text;	/* NULL when reply is empty */
	json_t *method;		/* made once, shared by every reply */
	struct param *params;
	size_t nparams;
	bool params_chat;	/* params set chat_id themselves */
	bool set_state;		/* a `set_state =` */
	char *next_state;	/* its state; NULL: none */
	char *save_name;	/* `save = name: TEMPLATE`, or NULL */
	struct template *save;
};

static const char *const reply_keys[] = { "method", "params", "set_state",
	"save", NULL };

static void
reply_destroy(void *arg)
{
	struct reply *r = arg;

	if (r == NULL)
		return;
	template_free(r->text);
	json_decref(r->method);
	free(r->next_state);
	free(r->save_name);
	template_free(r->save);
	for (size_t i = 0; i < r->nparams; i++) {
		free(r->params[i].key);
		template_free(r->params[i].tmpl);
		json_decref(r->params[i].value);
	}
	free(r->params);
	free(r);
}

static int
compile_params(struct reply *r, const char *src, const char *file, int line,
    struct diag *d)
{
	json_error_t jerr;
	json_t *obj = json_loads(src, JSON_REJECT_DUPLICATES, &jerr), *v;
	const char *k;
	char err[256];
	int rc = 0;

	if (!json_is_object(obj)) {
		diag_add(d, file, line, "params", "must be a JSON object: %s",
		    obj == NULL ? jerr.text : "found another JSON value");
		json_decref(obj);
		return -1;
	}
	r->params = xcalloc(json_object_size(obj), sizeof(*r->params));
	json_object_foreach(obj, k, v) {
		struct param *p = &r->params[r->nparams++];

		p->key = xstrdup(k);
		if (strcmp(k, "method") == 0) {
			diag_add(d, file, line, "params", "set the method with "
			    "the `method` key, not inside params");
			rc = -1;
		}
		if (strcmp(k, "chat_id") == 0)
			r->params_chat = true;
		if (json_is_string(v)) {
			p->tmpl = template_compile(json_string_value(v), err,
			    sizeof(err));
			if (p->tmpl == NULL) {
				diag_add(d, file, line, "params", "\"%s\": %s",
				    k, err);
				rc = -1;
			}
		} else {
			p->value = json_incref(v);
		}
	}
	json_decref(obj);
	return rc;
}

/* set_state and save.  0, or -1 with the problems in d. */
static int
compile_state(struct reply *r, const struct conf_handler *h,
    const char *file, struct diag *d)
{
	const char *v, *colon;
	char err[256], *tmp;
	int line, rc = 0;

	if ((v = handler_conf_get(h, "set_state", &line)) != NULL) {
		r->set_state = true;
		if (strcmp(v, "none") == 0)
			;
		else if (state_name_valid(v))
			r->next_state = xstrdup(v);
		else {
			diag_add(d, file, line, "set_state", "'%s' is not a "
			    "state name (1-%d of A-Z a-z 0-9 _) or none", v,
			    STATE_NAME_MAX);
			rc = -1;
		}
	}
	if ((v = handler_conf_get(h, "save", &line)) == NULL)
		return rc;
	if ((colon = strchr(v, ':')) == NULL) {
		diag_add(d, file, line, "save", "'%s' is not name: TEMPLATE "
		    "(for example save = name: {text})", v);
		return -1;
	}
	tmp = xstrndup(v, (size_t)(colon - v));
	r->save_name = xstrdup(str_trim(tmp));
	free(tmp);
	if (!state_name_valid(r->save_name)) {
		diag_add(d, file, line, "save", "'%s' is not a name (1-%d of "
		    "A-Z a-z 0-9 _)", r->save_name, STATE_NAME_MAX);
		rc = -1;
	}
	colon++;
	colon += strspn(colon, " \t");
	if ((r->save = template_compile(colon, err, sizeof(err))) == NULL) {
		diag_add(d, file, line, "save", "%s", err);
		rc = -1;
	}
	return rc;
}

static void *
reply_create(const struct conf_handler *h, const struct config *c,
    struct diag *d)
{
	struct reply *r = xcalloc(1, sizeof(*r));
	const char *text, *method, *params;
	int line, mline, pline;
	char err[256];
	bool bad = false;

	text = handler_conf_get(h, "reply", &line);
	method = handler_conf_get(h, "method", &mline);
	params = handler_conf_get(h, "params", &pline);
	r->method = json_string(method != NULL ? method : "sendMessage");
	{
		json_t *probe = json_pack("{sO?}", "method", r->method);

		if (calls_check(probe, err, sizeof(err)) == -1) {
			diag_add(d, c->file, mline, "method", "%s", err);
			bad = true;
		}
		json_decref(probe);
	}
	if (*text != '\0' && (r->text = template_compile(text, err,
	    sizeof(err))) == NULL) {
		diag_add(d, c->file, line, "reply", "%s", err);
		bad = true;
	}
	if (params != NULL && compile_params(r, params, c->file, pline, d) ==
	    -1)
		bad = true;
	if (compile_state(r, h, c->file, d) == -1)
		bad = true;
	if (bad) {
		reply_destroy(r);
		return NULL;
	}
	return r;
}

/* Sets call's key to t expanded for u.  Text from the update is the
 * sender's, not ours: where it reads as a local file (file://...), the
 * parameter is marked as text, so that it is sent as written and never
 * makes the daemon upload a file (only a handler's own output may). */
static void
set_expanded(json_t *call, const char *key, const struct template *t,
    const struct update *u, json_t *state)
{
	bool from_update;
	char *s = template_expand_state(t, u, state, &from_update);

	json_object_set_new(call, key, json_string(s));
	if (from_update && calls_names_file(s))
		calls_mark_text(call, key);
	free(s);
}

static int
reply_run(void *arg, const struct handler_input *in, json_t *calls, char *err,
    size_t errlen)
{
	struct reply *r = arg;
	const struct update *u = in->u;
	struct handler_state *st = in->state;
	json_t *call, *data = st != NULL ? st->data : NULL;

	if (!u->has_chat && !r->params_chat) {
		errf(err, errlen, "a %s update has no chat to reply to (set "
		    "chat_id in params, or narrow `updates`)", u->type);
		return -1;
	}
	if (st == NULL && (r->set_state || r->save != NULL)) {
		errf(err, errlen, "a %s update has no conversation state "
		    "(it has no chat or sender for [state] state_scope)",
		    u->type);
		return -1;
	}
	/* Saved first, so that this reply can show what it saved. */
	if (r->save != NULL) {
		char *s = template_expand_state(r->save, u, data, NULL);

		json_object_set_new(data, r->save_name, json_string(s));
		free(s);
		st->changed = true;
	}
	call = json_object();
	json_object_set(call, "method", r->method);
	if (u->has_chat)
		json_object_set_new(call, "chat_id",
		    json_integer((json_int_t)u->chat_id));
	if (r->text != NULL)
		set_expanded(call, "text", r->text, u, data);
	for (size_t i = 0; i < r->nparams; i++) {
		const struct param *p = &r->params[i];

		if (p->tmpl != NULL)
			set_expanded(call, p->key, p->tmpl, u, data);
		else
			json_object_set(call, p->key, p->value);
	}
	json_array_append_new(calls, call);
	/* Last: the reply still reads the data a move to none clears. */
	if (r->set_state) {
		free(st->name);
		st->name = r->next_state != NULL ? xstrdup(r->next_state) :
		    NULL;
		if (st->name == NULL)
			json_object_clear(data);
		st->changed = true;
	}
	return 0;
}

const struct handler_kind handler_reply = {
	.name = "reply",
	.keys = reply_keys,
	.blocking = false,
	.create = reply_create,
	.run = reply_run,
	.destroy = reply_destroy,
};
