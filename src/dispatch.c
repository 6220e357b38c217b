/*
 * dispatch.c: builds handlers from [handler.NAME] sections and matches
 * updates against them.  Each section names exactly one kind by its main
 * key (reply = ..., exec = ...); the kind checks its own keys, and any key
 * neither the match rules nor the kind knows is an error.
 */
#include "dispatch.h"

#include <ctype.h>
#include <regex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "state.h"
#include "update.h"
#include "util.h"

static const struct handler_kind *const kinds[] = { &handler_reply,
	&handler_exec, &handler_plugin, &handler_worker };
static const char *const match_keys[] = { "updates", "commands", "text",
	"state" };

struct dispatch {
	struct handler *handlers;
	size_t n;
	bool uses_state;
	atomic_int refs;
};

const char *
handler_conf_get(const struct conf_handler *h, const char *key, int *line)
{
	for (const struct conf_kv *kv = h->kv; kv != NULL; kv = kv->next)
		if (strcmp(kv->key, key) == 0) {
			if (line != NULL)
				*line = kv->line;
			return kv->value;
		}
	if (line != NULL)
		*line = h->line;
	return NULL;
}

int
handler_conf_state_io(const struct conf_handler *h, const struct config *c,
    struct diag *d)
{
	int line;
	const char *v = handler_conf_get(h, "state_io", &line);

	if (v == NULL || strcmp(v, "off") == 0)
		return 0;
	if (strcmp(v, "on") == 0)
		return 1;
	if (d != NULL)
		diag_add(d, c->file, line, "state_io", "'%s' is not on or off "
		    "(on: the handler is given the conversation's state and "
		    "may return a new one)", v);
	return -1;
}

static bool
key_in(const char *key, const char *const *keys, size_t n)
{
	for (size_t i = 0; n == 0 ? keys[i] != NULL : i < n; i++)
		if (strcmp(keys[i], key) == 0)
			return true;
	return false;
}

static void
handler_clear(struct handler *h)
{
	if (h->kind != NULL && h->state != NULL)
		h->kind->destroy(h->state);
	free(h->name);
	strlist_free(h->updates);
	strlist_free(h->commands);
	free(h->want_state);
	if (h->text != NULL) {
		regfree(h->text);
		free(h->text);
	}
}

/*
 * What a `text =` pattern may be.  glibc's regexec() without back-references
 * never backtracks: it runs the automaton over sets of states, so its time
 * is polynomial, not exponential, but not linear either: for a pattern that
 * can start anywhere it tries each start, about (text length)^2 x (size of
 * the expanded pattern).  A back-reference makes it search, which can take
 * seconds for one message (^(.+)\1+$).  So: back-references are refused;
 * counted repetitions, which glibc expands into copies ((a{1,100}){1,100} is
 * 10,000 copies: seconds per match, and (.{1,1000}){1,1000} takes 18 s to
 * compile), are bounded by the size they expand to; and a rule sees at most
 * DISPATCH_TEXT_MAX bytes of text.  Measured on the worst patterns allowed
 * against 4 KiB of adversarial text: about 0.1 s per match.
 */
#define RX_EXPANDED_MAX 1000	/* positions after expanding {m,n} */
#define RX_DEPTH_MAX 32		/* nested groups */
#define RX_SAT 1000000000u	/* sizes saturate here: no overflow */

static size_t
rx_mul(size_t a, size_t b)
{
	return b != 0 && a > RX_SAT / b ? RX_SAT : a * b;
}

/* The upper bound of the interval "{m}", "{m,}" or "{m,n}" at p (its end
 * in *end), or 0 if p is not a valid interval (glibc takes it literally
 * or regcomp() refuses it). */
static size_t
rx_interval(const char *p, const char **end)
{
	size_t m = 0, n;
	const char *q = p + 1;

	if (!isdigit((unsigned char)*q))
		return 0;
	while (isdigit((unsigned char)*q))
		m = rx_mul(m, 10) + (size_t)(*q++ - '0');
	n = m;
	if (*q == ',') {
		q++;
		if (isdigit((unsigned char)*q)) {
			n = 0;
			while (isdigit((unsigned char)*q))
				n = rx_mul(n, 10) + (size_t)(*q++ - '0');
		} else
			n = m + 1;	/* m copies and a starred one */
	}
	if (*q != '}')
		return 0;
	*end = q;
	return n > 0 ? n : 1;
}

/* The end of the bracket expression opening at p (at its ']'), or NULL
 * if it never closes (regcomp() says so). */
static const char *
rx_bracket(const char *p)
{
	p++;
	if (*p == '^')
		p++;
	if (*p == ']')
		p++;		/* a literal ']' first */
	for (; *p != '\0'; p++) {
		if (*p == '[' && (p[1] == ':' || p[1] == '.' || p[1] == '=')) {
			char close = p[1];

			for (p += 2; *p != '\0' && !(p[0] == close &&
			    p[1] == ']'); p++)
				;
			if (*p == '\0')
				return NULL;
			p++;
		} else if (*p == ']')
			return p;
	}
	return NULL;
}

/* 0 if pattern is one whose matching time is bounded (see above); -1
 * with why otherwise.  Syntax errors are left to regcomp(). */
static int
rx_bounded(const char *pattern, char *why, size_t whylen)
{
	/* per open group: positions so far, and those of the last atom */
	size_t sum[RX_DEPTH_MAX + 1] = { 0 }, last[RX_DEPTH_MAX + 1] = { 0 };
	size_t n;
	int depth = 0;

	for (const char *p = pattern; *p != '\0'; p++) {
		const char *end;

		switch (*p) {
		case '\\':
			if (p[1] >= '1' && p[1] <= '9') {
				snprintf(why, whylen, "back-reference \\%c: "
				    "matching it can take seconds for one "
				    "message; match the repeated text in the "
				    "handler instead", p[1]);
				return -1;
			}
			if (p[1] != '\0')
				p++;
			sum[depth] += last[depth] = 1;
			break;
		case '[':
			if ((end = rx_bracket(p)) == NULL)
				return 0;
			p = end;
			sum[depth] += last[depth] = 1;
			break;
		case '(':
			if (depth == RX_DEPTH_MAX) {
				snprintf(why, whylen, "groups nested deeper "
				    "than %d", RX_DEPTH_MAX);
				return -1;
			}
			depth++;
			sum[depth] = last[depth] = 0;
			break;
		case ')':
			if (depth == 0) {
				sum[depth] += last[depth] = 1;
				break;
			}
			n = sum[depth--];
			sum[depth] += last[depth] = n;
			break;
		case '+':	/* glibc makes a+ into aa* */
			sum[depth] += last[depth];
			last[depth] = rx_mul(last[depth], 2);
			break;
		case '*':
		case '?':
		case '|':
		case '^':
		case '$':
			break;
		case '{':
			if ((n = rx_interval(p, &end)) == 0) {
				sum[depth] += last[depth] = 1;
				break;
			}
			p = end;
			sum[depth] += rx_mul(last[depth], n - 1);
			last[depth] = rx_mul(last[depth], n);
			break;
		default:
			sum[depth] += last[depth] = 1;
			break;
		}
		if (sum[depth] > RX_SAT)
			sum[depth] = RX_SAT;
	}
	while (depth > 0) {	/* unclosed: regcomp() refuses it anyway */
		n = sum[depth--];
		sum[depth] += n;
	}
	if (sum[0] > RX_EXPANDED_MAX) {
		snprintf(why, whylen, "its counted repetitions {m,n} expand to "
		    "%s%zu positions, over %d: matching could take seconds "
		    "for one message; use smaller counts, or + and *",
		    sum[0] >= RX_SAT ? "over " : "", sum[0], RX_EXPANDED_MAX);
		return -1;
	}
	return 0;
}

static int
build_rules(struct handler *h, const struct conf_handler *ch,
    const struct config *c, struct diag *d)
{
	const char *v;
	int line, rc = 0;

	if ((v = handler_conf_get(ch, "state", &line)) != NULL) {
		h->has_state = true;
		if (strcmp(v, "none") != 0 && !state_name_valid(v)) {
			diag_add(d, c->file, line, "state", "'%s' is not a "
			    "state name (1-%d of A-Z a-z 0-9 _) or none", v,
			    STATE_NAME_MAX);
			rc = -1;
		} else if (strcmp(v, "none") != 0) {
			h->want_state = xstrdup(v);
		}
	}
	if ((v = handler_conf_get(ch, "updates", &line)) != NULL) {
		h->updates = strlist_split(v, NULL);
		if (h->updates[0] == NULL) {
			diag_add(d, c->file, line, "updates", "empty list");
			rc = -1;
		}
		for (char **p = h->updates; *p != NULL; p++)
			if (update_type_index(*p) == -1) {
				diag_add(d, c->file, line, "updates", "'%s' is "
				    "not an update type of Bot API 10.3", *p);
				rc = -1;
			}
	}
	if ((v = handler_conf_get(ch, "commands", &line)) != NULL) {
		h->commands = strlist_split(v, NULL);
		if (h->commands[0] == NULL) {
			diag_add(d, c->file, line, "commands", "empty list");
			rc = -1;
		}
		for (char **p = h->commands; *p != NULL; p++) {
			char *name = *p + (**p == '/');
			size_t n = strlen(name);

			memmove(*p, name, n + 1);
			if (n == 0 || n > 64 || strspn(*p,
			    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
			    "0123456789_") != n) {
				diag_add(d, c->file, line, "commands", "'%s' is "
				    "not a command: /name with 1-64 of A-Z a-z "
				    "0-9 _", *p);
				rc = -1;
			}
		}
	}
	if ((v = handler_conf_get(ch, "text", &line)) != NULL) {
		char why[256];
		int e;

		if (rx_bounded(v, why, sizeof(why)) == -1) {
			diag_add(d, c->file, line, "text", "%s", why);
			return -1;
		}
		h->text = xcalloc(1, sizeof(*h->text));
		if ((e = regcomp(h->text, v, REG_EXTENDED | REG_NOSUB)) != 0) {
			char msg[256];

			regerror(e, h->text, msg, sizeof(msg));
			diag_add(d, c->file, line, "text", "bad regular "
			    "expression: %s", msg);
			free(h->text);
			h->text = NULL;
			rc = -1;
		}
	}
	return rc;
}

static int
build_handler(struct handler *h, const struct conf_handler *ch,
    const struct config *c, struct diag *d)
{
	const struct handler_kind *kind = NULL;
	int before = d->count;

	h->name = xstrdup(ch->name);
	h->line = ch->line;
	for (size_t i = 0; i < nitems(kinds); i++) {
		int line;

		if (handler_conf_get(ch, kinds[i]->name, &line) == NULL)
			continue;
		if (kind != NULL) {
			diag_add(d, c->file, line, kinds[i]->name, "[handler.%s] "
			    "already has `%s`: one kind per handler", ch->name,
			    kind->name);
			continue;
		}
		kind = kinds[i];
	}
	if (kind == NULL) {
		diag_add(d, c->file, ch->line, NULL, "[handler.%s] names no "
		    "kind: reply = TEXT, exec = /path/to/program, plugin = "
		    "/path/to/x.so or worker = /path/to/program", ch->name);
		return -1;
	}
	for (const struct conf_kv *kv = ch->kv; kv != NULL; kv = kv->next)
		if (kind->keys != NULL &&
		    !key_in(kv->key, match_keys, nitems(match_keys)) &&
		    strcmp(kv->key, kind->name) != 0 &&
		    !key_in(kv->key, kind->keys, 0))
			diag_add(d, c->file, kv->line, kv->key, "unknown key "
			    "for a%s %s handler", kind->name[0] == 'e' ? "n" :
			    "", kind->name);
	build_rules(h, ch, c, d);
	if (d->count > before)
		return -1;
	if ((h->state = kind->create(ch, c, d)) == NULL)
		return -1;
	h->kind = kind;
	h->blocking = kind->blocks != NULL ? kind->blocks(h->state) :
	    kind->blocking;
	return 0;
}

struct dispatch *
dispatch_new(const struct config *c, struct diag *d)
{
	struct dispatch *t = xcalloc(1, sizeof(*t));
	size_t n = 0;
	int bad = 0;

	for (const struct conf_handler *h = c->handlers; h != NULL; h = h->next)
		n++;
	atomic_init(&t->refs, 1);
	t->handlers = xcalloc(n, sizeof(*t->handlers));
	for (const struct conf_handler *h = c->handlers; h != NULL; h = h->next)
		if (build_handler(&t->handlers[t->n++], h, c, d) == -1)
			bad = 1;
		else {
			t->handlers[t->n - 1].table = t;
			t->uses_state |= t->handlers[t->n - 1].has_state ||
			    handler_conf_get(h, "set_state", NULL) != NULL ||
			    handler_conf_get(h, "save", NULL) != NULL ||
			    handler_conf_state_io(h, c, NULL) == 1;
		}
	if (bad) {
		dispatch_free(t);
		return NULL;
	}
	return t;
}

void
dispatch_start(struct dispatch *t)
{
	for (size_t i = 0; i < t->n; i++)
		if (t->handlers[i].kind->start != NULL)
			t->handlers[i].kind->start(t->handlers[i].state);
}

void
dispatch_ref(struct dispatch *t)
{
	atomic_fetch_add(&t->refs, 1);
}

void
dispatch_unref(struct dispatch *t)
{
	if (t == NULL || atomic_fetch_sub(&t->refs, 1) > 1)
		return;
	for (size_t i = 0; i < t->n; i++)
		handler_clear(&t->handlers[i]);
	free(t->handlers);
	free(t);
}

void
dispatch_free(struct dispatch *t)
{
	dispatch_unref(t);
}

/* Matches the first DISPATCH_TEXT_MAX bytes of text (cut before a
 * character, not inside one); '$' does not match at such a cut. */
static bool
text_matches(const regex_t *re, const char *text, size_t len)
{
	regmatch_t m[1];
	int flags = REG_STARTEND;

	if (len > DISPATCH_TEXT_MAX) {
		len = DISPATCH_TEXT_MAX;
		while (len > 0 && ((unsigned char)text[len] & 0xc0) == 0x80)
			len--;
		flags |= REG_NOTEOL;
	}
	m[0].rm_so = 0;
	m[0].rm_eo = (regoff_t)len;
	return regexec(re, text, 1, m, flags) == 0;
}

/* state: the conversation's (NULL: none); with_state false ignores
 * `state =` rules. */
static bool
matches(const struct handler *h, const struct update *u, const char *username,
    bool with_state, const char *state)
{
	if (with_state && h->has_state && (h->want_state == NULL ?
	    state != NULL : state == NULL || strcmp(state, h->want_state) !=
	    0))
		return false;
	if (h->updates != NULL) {
		bool ok = false;

		for (char **p = h->updates; *p != NULL && !ok; p++)
			ok = strcmp(*p, u->type) == 0;
		if (!ok)
			return false;
	}
	if (h->commands != NULL) {
		bool ok = false;

		if (!update_command_is_ours(u, username))
			return false;
		for (char **p = h->commands; *p != NULL && !ok; p++)
			ok = strcasecmp(*p, u->command) == 0;
		if (!ok)
			return false;
	}
	if (h->text != NULL && (u->text == NULL || !text_matches(h->text,
	    u->text, u->text_len)))
		return false;
	return true;
}

const struct handler *
dispatch_match(const struct dispatch *t, const struct update *u,
    const char *username)
{
	for (size_t i = 0; i < t->n; i++)
		if (matches(&t->handlers[i], u, username, false, NULL))
			return &t->handlers[i];
	return NULL;
}

const struct handler *
dispatch_match_state(const struct dispatch *t, const struct update *u,
    const char *username, const char *state)
{
	for (size_t i = 0; i < t->n; i++)
		if (matches(&t->handlers[i], u, username, true, state))
			return &t->handlers[i];
	return NULL;
}

bool
dispatch_uses_state(const struct dispatch *t)
{
	return t->uses_state;
}

int
dispatch_run(const struct handler *h, const struct handler_input *in,
    json_t *calls, char *err, size_t errlen)
{
	return h->kind->run(h->state, in, calls, err, errlen);
}
