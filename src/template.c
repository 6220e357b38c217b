/*
 * template.c: compiled once at start-up into literal and path segments, so
 * the request path only walks JSON and appends bytes.
 */
#include "template.h"

#include <ctype.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "update.h"
#include "util.h"

#define TEMPLATE_PATH_MAX 8

enum seg_kind { SEG_TEXT, SEG_PATH, SEG_ARGS, SEG_COMMAND, SEG_UPDATE_ID,
	SEG_CHAT_ID };

struct seg {
	enum seg_kind kind;
	char *text;			/* SEG_TEXT */
	char *path[TEMPLATE_PATH_MAX];	/* SEG_PATH, NULL-terminated */
};

struct template {
	struct seg *segs;
	size_t n;
};

static struct seg *
seg_add(struct template *t, enum seg_kind kind)
{
	t->segs = xrealloc(t->segs, (t->n + 1) * sizeof(*t->segs));
	memset(&t->segs[t->n], 0, sizeof(t->segs[0]));
	t->segs[t->n].kind = kind;
	return &t->segs[t->n++];
}

static int
parse_placeholder(struct template *t, const char *s, size_t n, size_t col,
    char *err, size_t errlen)
{
	static const struct {
		const char *name;
		enum seg_kind kind;
	} specials[] = {
		{ "args", SEG_ARGS }, { "command", SEG_COMMAND },
		{ "update_id", SEG_UPDATE_ID }, { "chat_id", SEG_CHAT_ID },
	};
	struct seg *seg;
	size_t depth = 0;

	for (size_t i = 0; i < nitems(specials); i++)
		if (strlen(specials[i].name) == n &&
		    memcmp(specials[i].name, s, n) == 0) {
			seg_add(t, specials[i].kind);
			return 0;
		}
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' &&
		    s[i] != '.') {
			errf(err, errlen, "column %zu: placeholder {%.*s} may "
			    "hold only A-Z a-z 0-9 _ and dots (use {{ and }} "
			    "for literal braces)", col, (int)n, s);
			return -1;
		}
	seg = seg_add(t, SEG_PATH);
	while (n > 0) {
		const char *dot = memchr(s, '.', n);
		size_t len = dot != NULL ? (size_t)(dot - s) : n;

		if (len == 0 || depth == TEMPLATE_PATH_MAX - 1) {
			errf(err, errlen, "column %zu: placeholder path must "
			    "be 1-%d names separated by single dots", col,
			    TEMPLATE_PATH_MAX - 1);
			return -1;
		}
		seg->path[depth++] = xstrndup(s, len);
		s += len;
		n -= len;
		if (dot != NULL) {
			s++;
			n--;
			if (n == 0) {
				errf(err, errlen, "column %zu: placeholder "
				    "path ends with a dot", col);
				return -1;
			}
		}
	}
	if (depth == 0) {
		errf(err, errlen, "column %zu: empty placeholder {} (use {{ "
		    "and }} for literal braces)", col);
		return -1;
	}
	return 0;
}

struct template *
template_compile(const char *src, char *err, size_t errlen)
{
	struct template *t = xcalloc(1, sizeof(*t));
	struct buf lit = { 0 };
	const char *p = src;

	while (*p != '\0') {
		if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
			buf_append(&lit, p, 1);
			p += 2;
			continue;
		}
		if (*p == '}') {
			errf(err, errlen, "column %zu: lone '}' (write }} for "
			    "a literal brace)", (size_t)(p - src) + 1);
			goto fail;
		}
		if (*p != '{') {
			buf_append(&lit, p, 1);
			p++;
			continue;
		}
		const char *close = strchr(p, '}');

		if (close == NULL) {
			errf(err, errlen, "column %zu: '{' without '}' (write "
			    "{{ for a literal brace)", (size_t)(p - src) + 1);
			goto fail;
		}
		if (lit.len > 0)
			seg_add(t, SEG_TEXT)->text = buf_steal(&lit);
		if (parse_placeholder(t, p + 1, (size_t)(close - p - 1),
		    (size_t)(p - src) + 1, err, errlen) == -1)
			goto fail;
		p = close + 1;
	}
	if (lit.len > 0)
		seg_add(t, SEG_TEXT)->text = buf_steal(&lit);
	buf_free(&lit);
	return t;
fail:
	buf_free(&lit);
	template_free(t);
	return NULL;
}

void
template_free(struct template *t)
{
	if (t == NULL)
		return;
	for (size_t i = 0; i < t->n; i++) {
		free(t->segs[i].text);
		for (size_t j = 0; t->segs[i].path[j] != NULL; j++)
			free(t->segs[i].path[j]);
	}
	free(t->segs);
	free(t);
}

bool
template_is_literal(const struct template *t)
{
	for (size_t i = 0; i < t->n; i++)
		if (t->segs[i].kind != SEG_TEXT)
			return false;
	return true;
}

static void
append_json(struct buf *b, json_t *v)
{
	char *s;

	switch (json_typeof(v)) {
	case JSON_STRING:
		buf_append(b, json_string_value(v), json_string_length(v));
		break;
	case JSON_INTEGER:
		buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		break;
	case JSON_REAL:
		buf_printf(b, "%.17g", json_real_value(v));
		break;
	case JSON_TRUE:
		buf_puts(b, "true");
		break;
	case JSON_FALSE:
		buf_puts(b, "false");
		break;
	case JSON_NULL:
		break;
	case JSON_OBJECT:
	case JSON_ARRAY:
		if ((s = json_dumps(v, JSON_COMPACT)) != NULL) {
			buf_puts(b, s);
			free(s);
		}
		break;
	}
}

static json_t *
lookup(json_t *v, char *const *path)
{
	for (; v != NULL && *path != NULL; path++) {
		if (json_is_array(v) && str_is_digits(*path))
			v = json_array_get(v, strtoul(*path, NULL, 10));
		else
			v = json_object_get(v, *path);
	}
	return v;
}

char *
template_expand(const struct template *t, const struct update *u)
{
	return template_expand_state(t, u, NULL, NULL);
}

char *
template_expand_from(const struct template *t, const struct update *u,
    bool *from_update)
{
	return template_expand_state(t, u, NULL, from_update);
}

char *
template_expand_state(const struct template *t, const struct update *u,
    json_t *state, bool *from_update)
{
	struct buf b = { 0 };
	bool from = false;
	json_t *v;

	for (size_t i = 0; i < t->n; i++) {
		const struct seg *s = &t->segs[i];

		switch (s->kind) {
		case SEG_TEXT:
			buf_puts(&b, s->text);
			break;
		case SEG_ARGS:
			buf_puts(&b, u->args != NULL ? u->args : "");
			from = from || (u->args != NULL && *u->args != '\0');
			break;
		case SEG_COMMAND:
			if (u->command != NULL)
				buf_puts(&b, u->command);
			from = from || u->command != NULL;
			break;
		case SEG_UPDATE_ID:
			buf_printf(&b, "%" PRId64, u->id);
			break;
		case SEG_CHAT_ID:
			if (u->has_chat)
				buf_printf(&b, "%" PRId64, u->chat_id);
			break;
		case SEG_PATH:
			/* {state.x}: the conversation's data, saved from
			 * earlier updates (so text someone else wrote) */
			if (strcmp(s->path[0], "state") == 0)
				v = lookup(state, s->path + 1);
			else
				v = lookup(u->obj, s->path);
			if (v != NULL)
				append_json(&b, v);
			from = from || json_is_string(v) || json_is_object(v) ||
			    json_is_array(v);
			break;
		}
	}
	if (from_update != NULL)
		*from_update = from;
	return buf_steal(&b);
}
