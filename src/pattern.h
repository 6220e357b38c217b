/*
 * pattern.h: a handler's `text =` pattern, matched with a bound on the
 * work one match may take, whatever the pattern and the text.  Compiled
 * once (at config load); matched from any thread, read-only.
 */
#ifndef TGW_PATTERN_H
#define TGW_PATTERN_H

#include <stdbool.h>
#include <stddef.h>

struct pattern;

enum pattern_result {
	PATTERN_NO_MATCH,
	PATTERN_MATCH,
	PATTERN_LIMIT,		/* gave up at the work bound: no answer */
};

/* Compiles src (PCRE2 syntax, UTF-8; see README's `text =`).  NULL with
 * why in err: PCRE2's message and the offset in src, or the construct
 * refused. */
struct pattern *pattern_new(const char *src, char *err, size_t errlen);
/* NULL-safe. */
void pattern_free(struct pattern *p);
/* Matches the n bytes at text (any bytes: invalid UTF-8 never matches,
 * never fails).  cut: text is the start of a longer one, so '$' does not
 * match at its end.  After a thread's first call it allocates nothing. */
enum pattern_result pattern_match(const struct pattern *p, const char *text,
    size_t n, bool cut);
/* True if p runs compiled to machine code (PCRE2's JIT); false: the
 * interpreter (no JIT here, or executable memory refused). */
bool pattern_jit(const struct pattern *p);

#endif
