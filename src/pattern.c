/*
 * pattern.c: `text =` patterns on PCRE2, with a work bound per match.
 *
 * glibc's regexec() has no bound at all: [ab]*a[ab]{20}c took 9.5 s on
 * 4096 bytes of hostile text.  PCRE2 backtracks, and counts: the match
 * limit caps the backtracking steps (new frames in the interpreter; the
 * JIT counts its own way), the depth limit their nesting, the heap limit
 * the interpreter's memory for them (the JIT uses its own stack, bounded
 * by its size).  A limit reached is an answer of its own, PATTERN_LIMIT:
 * the caller treats it as no match.
 *
 * PCRE2 restarts the match count at each position where a match may
 * start (both engines), so a limit given as is would bound the work at
 * one position, and an unanchored pattern could spend it at each of 4097.
 * And one counted step of the interpreter goes through a counted
 * repetition's fixed copies uncounted ([ab]{200} is one step).  So
 * pattern_match() divides one budget, PATTERN_WORK, by the number of
 * positions PCRE2 can try in this text (1 for an anchored pattern; those
 * holding a possible first byte when PCRE2 knows them; else every
 * character) times the positions one step may go through (the pattern's
 * fixed copies, at least 1).  A long text gets a smaller limit per
 * position, and the sum stays bounded; counted repetitions that expand
 * past PATTERN_EXPANDED_MAX are refused at compile time.
 *
 * And one counted step may go through many characters uncounted: a
 * possessive or auto-possessified repeat (\X*, \p{L}*!), a lookahead's
 * scan.  An anchored pattern whose backtracking reaches such a scan at
 * each of its steps (^(?:a?){0,40}\X*!z) took 3.3 s on 4 KiB with the
 * match limit alone.  So every item also goes through a callout
 * (PCRE2_AUTO_CALLOUT) that charges one unit, plus the characters the
 * match moved forward since the last one, against PATTERN_STEPS: the
 * work between two callouts is one item's, so the bound holds whatever
 * the pattern.
 *
 * Matching state (match data, match context, JIT stack) is per thread,
 * made at a thread's first match and reused: a match allocates nothing.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "pattern.h"

#include <ctype.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

/*
 * One match's work, in PCRE2's counted steps, shared by all the positions
 * it tries.  A sane pattern takes a few steps per position it tries, and
 * tens where it backtracks over a word: a message of 4096 characters
 * leaves 244 per position to an unanchored pattern that may start
 * anywhere (more where PCRE2 skips positions by their first byte), a
 * 100-character one 9,900, an anchored pattern the whole budget.
 * Measured here on the worst patterns we found, tuned to stay just under
 * the limit at every position (unanchored, start optimisations defeated,
 * nested and counted repetitions, 4096 bytes of hostile text): at most
 * 0.4 ms, in the JIT and in the interpreter.  Without the division the
 * same patterns took 0.1-1.5 s.
 */
#define PATTERN_WORK 1000000u
/* One match's items and the characters they went through (callouts):
 * sane patterns over 4 KiB use tens of thousands. */
#define PATTERN_STEPS 200000u
/* The interpreter's backtracking frames: nesting, and memory (KiB; a
 * frame is about 128 bytes and 16 per group). */
#define PATTERN_DEPTH 10000u
#define PATTERN_HEAP_KIB 1024u
/* The JIT's stack, per thread (reserved, then used as it grows). */
#define PATTERN_JIT_STACK_MIN (32u * 1024)
#define PATTERN_JIT_STACK_MAX (1024u * 1024)
/* What a configuration may ask for. */
#define PATTERN_SRC_MAX 4096u
#define PATTERN_NEST_MAX 32u
/* Positions after expanding counted repetitions {m,n}, as PCRE2 copies
 * them: (a{1,100}){1,100} is 10,000 copies. */
#define PATTERN_EXPANDED_MAX 1000u
#define SAT 1000000000u		/* sizes saturate here: no overflow */

struct pattern {
	pcre2_code *code;
	size_t fixed;		/* positions one step may go through */
	bool jit;
	bool anchored;		/* one position to try */
	bool start_known;	/* PCRE2 skips positions by their first byte */
	uint8_t first[256];	/* ...those it tries: 1 */
};

struct pattern_tls {
	pcre2_match_data *md;
	pcre2_match_context *mc;
	pcre2_jit_stack *js;
};

static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void
tls_free(void *arg)
{
	struct pattern_tls *t = arg;

	pcre2_match_data_free(t->md);
	pcre2_match_context_free(t->mc);
	pcre2_jit_stack_free(t->js);
	free(t);
}

static void
tls_init(void)
{
	if (pthread_key_create(&tls_key, tls_free) != 0)
		abort();
}

static void *
pcre2_alloc_or_abort(void *p)
{
	if (p == NULL) {
		log_err("PCRE2: out of memory");
		abort();
	}
	return p;
}

static struct pattern_tls *
tls_get(void)
{
	struct pattern_tls *t;

	pthread_once(&tls_once, tls_init);
	if ((t = pthread_getspecific(tls_key)) != NULL)
		return t;
	t = xcalloc(1, sizeof(*t));
	/* one pair of offsets: only whether it matched is asked */
	t->md = pcre2_alloc_or_abort(pcre2_match_data_create(1, NULL));
	t->mc = pcre2_alloc_or_abort(pcre2_match_context_create(NULL));
	t->js = pcre2_alloc_or_abort(pcre2_jit_stack_create(
	    PATTERN_JIT_STACK_MIN, PATTERN_JIT_STACK_MAX, NULL));
	pcre2_jit_stack_assign(t->mc, NULL, t->js);
	pcre2_set_depth_limit(t->mc, PATTERN_DEPTH);
	pcre2_set_heap_limit(t->mc, PATTERN_HEAP_KIB);
	if (pthread_setspecific(tls_key, t) != 0)
		abort();
	return t;
}

static size_t
mul(size_t a, size_t b)
{
	return b != 0 && a > SAT / b ? SAT : a * b;
}

/* True if q is at "{m}", "{m,}" or "{m,n}" (its end in *end), with the
 * count in *count: n, or m if least.  False: PCRE2 takes q literally. */
static bool
quantifier(const char *q, const char **end, bool least, size_t *count)
{
	size_t m = 0, n;

	if (!isdigit((unsigned char)*++q))
		return false;
	while (isdigit((unsigned char)*q))
		m = mul(m, 10) + (size_t)(*q++ - '0');
	n = m;
	if (*q == ',') {
		q++;
		n = isdigit((unsigned char)*q) ? 0 : m + 1;
		while (isdigit((unsigned char)*q))
			n = mul(n, 10) + (size_t)(*q++ - '0');
	}
	if (*q != '}')
		return false;
	*end = q;
	*count = least ? m : n;
	return true;
}

/* The end of the character class opening at p (its ']'), or NULL. */
static const char *
bracket_end(const char *p)
{
	p++;
	if (*p == '^')
		p++;
	if (*p == ']')
		p++;		/* a literal ']' first */
	for (; *p != '\0'; p++) {
		if (*p == '\\' && p[1] != '\0')
			p++;
		else if (*p == '[' && p[1] == ':') {
			const char *q = strstr(p + 2, ":]");

			if (q == NULL)
				return NULL;
			p = q + 1;
		} else if (*p == ']')
			return p;
	}
	return NULL;
}

/*
 * The positions src expands to (saturating), counting each atom as 1 and
 * a counted repetition as its copies: with least, only the copies that
 * must match (a{3,9} is 3), which one counted step of the interpreter may
 * go through without counting (the optional ones backtrack, and count);
 * else all of them.  A rough parse that errs high: a '{' in brackets or
 * in \Q...\E counts too.  src has compiled, so its groups nest at most
 * PATTERN_NEST_MAX deep.
 */
static size_t
expansion(const char *src, bool least)
{
	size_t sum[PATTERN_NEST_MAX + 2] = { 0 }, last[PATTERN_NEST_MAX + 2] =
	    { 0 }, n;
	int depth = 0;

	for (const char *p = src; *p != '\0'; p++) {
		const char *end;

		switch (*p) {
		case '\\':
			if (p[1] != '\0')
				p++;
			sum[depth] += last[depth] = 1;
			break;
		case '[':
			if ((end = bracket_end(p)) == NULL)
				return SAT;
			p = end;
			sum[depth] += last[depth] = 1;
			break;
		case '(':
			if (depth == PATTERN_NEST_MAX + 1)
				return SAT;
			depth++;
			sum[depth] = last[depth] = 0;
			break;
		case ')':
			if (depth == 0)
				return SAT;
			n = sum[depth--];
			sum[depth] += last[depth] = n;
			break;
		case '+':	/* a+ is a and a*: twice a's positions */
			if (!least) {
				sum[depth] += last[depth];
				last[depth] = mul(last[depth], 2);
			}
			break;
		case '*':
		case '?':
		case '|':
		case '^':
		case '$':
			break;
		case '{':
			if (!quantifier(p, &end, least, &n)) {
				sum[depth] += last[depth] = 1;
				break;
			}
			p = end;
			/* the atom counted once already: n - 1 more */
			if (n == 0) {
				sum[depth] -= last[depth];
				last[depth] = 0;
				break;
			}
			sum[depth] += mul(last[depth], n - 1);
			last[depth] = mul(last[depth], n);
			break;
		default:
			sum[depth] += last[depth] = 1;
			break;
		}
		if (sum[depth] > SAT)
			sum[depth] = SAT;
	}
	while (depth > 0) {
		n = sum[depth--];
		sum[depth] += n;
	}
	return sum[0] > SAT ? SAT : sum[0];
}

/* The bytes PCRE2 may start a match at, from what it learnt compiling. */
static void
learn_start(struct pattern *p)
{
	uint32_t opts = 0, type = 0, unit = 0;
	const uint8_t *bits = NULL;

	pcre2_pattern_info(p->code, PCRE2_INFO_ALLOPTIONS, &opts);
	if ((opts & PCRE2_NO_START_OPTIMIZE) != 0)
		return;		/* every position is tried */
	/* ^, \A, \G, or .* (DOTALL) first in every branch */
	p->anchored = (opts & PCRE2_ANCHORED) != 0;
	pcre2_pattern_info(p->code, PCRE2_INFO_FIRSTCODETYPE, &type);
	if (type == 1) {
		pcre2_pattern_info(p->code, PCRE2_INFO_FIRSTCODEUNIT, &unit);
		/* a caseless first letter is tried in both cases */
		p->first[unit & 0xff] = 1;
		if ((unit >= 'A' && unit <= 'Z') || (unit >= 'a' && unit <= 'z'))
			p->first[(unit ^ 0x20) & 0xff] = 1;
		p->start_known = true;
	} else if (type == 0 &&
	    pcre2_pattern_info(p->code, PCRE2_INFO_FIRSTBITMAP, &bits) == 0 &&
	    bits != NULL) {
		for (int i = 0; i < 256; i++)
			p->first[i] = (bits[i / 8] >> (i % 8)) & 1;
		p->start_known = true;
	}
}

struct pattern *
pattern_new(const char *src, char *err, size_t errlen)
{
	pcre2_compile_context *cc;
	struct pattern *p;
	PCRE2_SIZE off;
	uint32_t backrefs = 0;
	size_t n;
	int e;

	if (strlen(src) > PATTERN_SRC_MAX) {
		errf(err, errlen, "a pattern of over %u bytes",
		    PATTERN_SRC_MAX);
		return NULL;
	}
	cc = pcre2_alloc_or_abort(pcre2_compile_context_create(NULL));
	pcre2_set_parens_nest_limit(cc, PATTERN_NEST_MAX);
	p = xcalloc(1, sizeof(*p));
	/*
	 * As regcomp(REG_EXTENDED) had it: case-sensitive, '.' matches a
	 * newline too, '^' and '$' only at the text's ends (not before a
	 * final newline).  UTF-8, with invalid bytes matching nothing rather
	 * than failing the match.  \C (one byte of a character) never.
	 */
	p->code = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED,
	    PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | PCRE2_DOTALL |
	    PCRE2_DOLLAR_ENDONLY | PCRE2_NEVER_BACKSLASH_C |
	    PCRE2_AUTO_CALLOUT, &e, &off, cc);
	pcre2_compile_context_free(cc);
	if (p->code == NULL) {
		PCRE2_UCHAR msg[256];

		pcre2_get_error_message(e, msg, sizeof(msg));
		errf(err, errlen, "bad regular expression at offset %zu: %s",
		    (size_t)off, (const char *)msg);
		free(p);
		return NULL;
	}
	/* A back-reference compares up to the text's length in one counted
	 * step: the work bound would not hold. */
	pcre2_pattern_info(p->code, PCRE2_INFO_BACKREFMAX, &backrefs);
	if (backrefs > 0) {
		errf(err, errlen, "back-reference (\\%u or a named one): "
		    "matching it is not bounded by the work limit; match the "
		    "repeated text in the handler instead", backrefs);
		pattern_free(p);
		return NULL;
	}
	/* Copies of counted repetitions: one counted step can go through
	 * all of them, so they cost outside the match limit. */
	if ((n = expansion(src, false)) > PATTERN_EXPANDED_MAX) {
		errf(err, errlen, "its counted repetitions {m,n} expand to "
		    "%s%zu positions, over %u: matching could take seconds for "
		    "one message; use smaller counts, or + and *", n >= SAT ?
		    "over " : "", n, PATTERN_EXPANDED_MAX);
		pattern_free(p);
		return NULL;
	}
	p->fixed = expansion(src, true);
	if (p->fixed == 0)
		p->fixed = 1;
	learn_start(p);
	/* Fails without JIT support, or where executable memory is refused
	 * (systemd's MemoryDenyWriteExecute=yes): the interpreter runs. */
	if (pcre2_jit_compile(p->code, PCRE2_JIT_COMPLETE) == 0) {
		size_t size = 0;

		/* 0 for a pattern that asks for no JIT: (*NO_JIT) */
		pcre2_pattern_info(p->code, PCRE2_INFO_JITSIZE, &size);
		p->jit = size > 0;
	}
	return p;
}

void
pattern_free(struct pattern *p)
{
	if (p == NULL)
		return;
	pcre2_code_free(p->code);
	free(p);
}

bool
pattern_jit(const struct pattern *p)
{
	return p->jit;
}

/* How many positions of the n bytes at text PCRE2 may try a match at (at
 * least 1: the end, for patterns that match empty). */
static size_t
positions(const struct pattern *p, const unsigned char *text, size_t n)
{
	size_t k = 1;

	if (p->anchored)
		return 1;
	for (size_t i = 0; i < n; i++)
		if (p->start_known ? p->first[text[i]] != 0 :
		    (text[i] & 0xc0) != 0x80)
			k++;
	return k;
}

/* What one match has left of PATTERN_STEPS, and where its last item
 * began. */
struct steps {
	size_t left;
	PCRE2_SIZE last;
};

/* Before each item: one unit, and the characters gone through since the
 * last item (a move back, to another start or out of a lookahead, costs
 * nothing more: that work was charged going forward).  Past the budget,
 * the match gives up as at the match limit. */
static int
charge(pcre2_callout_block *cb, void *arg)
{
	struct steps *st = arg;
	size_t cost = 1;

	if (cb->current_position > st->last)
		cost += cb->current_position - st->last;
	st->last = cb->current_position;
	if (cost > st->left)
		return PCRE2_ERROR_MATCHLIMIT;
	st->left -= cost;
	return 0;
}

enum pattern_result
pattern_match(const struct pattern *p, const char *text, size_t n, bool cut)
{
	struct pattern_tls *t = tls_get();
	size_t k = mul(positions(p, (const unsigned char *)text, n), p->fixed);
	struct steps st = { PATTERN_STEPS, 0 };
	int rc;

	pcre2_set_match_limit(t->mc, k >= PATTERN_WORK ? 1 :
	    (uint32_t)(PATTERN_WORK / k));
	pcre2_set_callout(t->mc, charge, &st);
	rc = pcre2_match(p->code, (PCRE2_SPTR)text, n, 0, cut ? PCRE2_NOTEOL :
	    0, t->md, t->mc);
	if (rc >= 0)
		return PATTERN_MATCH;
	if (rc == PCRE2_ERROR_NOMATCH)
		return PATTERN_NO_MATCH;
	/* PCRE2_ERROR_MATCHLIMIT, _DEPTHLIMIT, _HEAPLIMIT, _JIT_STACKLIMIT,
	 * _NOMEMORY: gave up */
	return PATTERN_LIMIT;
}
