/*
 * template.h: reply texts with placeholders.  "{from.first_name}" reads a
 * path in the update's main object (numbers index arrays:
 * "{photo.0.file_id}"), "{args}" the command's arguments, "{command}" the
 * command, "{update_id}" and "{chat_id}" the ids, "{state.name}" what the
 * conversation's state keeps under name; "{{" and "}}" are literal
 * braces.  A missing value expands to nothing.
 */
#ifndef TGW_TEMPLATE_H
#define TGW_TEMPLATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct update;
struct template;

/* Compiles src.  Returns the template (free with template_free) or NULL
 * with err naming the problem and its column. */
struct template *template_compile(const char *src, char *err, size_t errlen);
void template_free(struct template *t);
/* True if the template has no placeholder (its text is fixed). */
bool template_is_literal(const struct template *t);
/* Expands t for u; the caller frees the result. */
char *template_expand(const struct template *t, const struct update *u);
/* The same; *from_update (if not NULL) tells whether text from the
 * update went into the result: a string, object or array from a path,
 * {args} or {command}; not ids or other numbers.  Such a result is text
 * someone else wrote, never a name of a local file (calls.h). */
char *template_expand_from(const struct template *t, const struct update *u,
    bool *from_update);
/* The same, reading {state.x} from state (a JSON object, lent; NULL:
 * they expand to nothing). */
char *template_expand_state(const struct template *t, const struct update *u,
    json_t *state, bool *from_update);

#endif
