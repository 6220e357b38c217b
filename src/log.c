/*
 * log.c: one write(2) per line so that lines from concurrent threads never
 * interleave.  Redaction runs on the whole formatted message, before it is
 * cut to the line bound, so a secret cannot slip through a library's error
 * text or a URL, nor leave its first part at the cut.  Then every byte
 * that is not printable is escaped, so that input (an HTTP method, a
 * handler's stderr) can neither forge lines nor send a terminal escape
 * sequence.  The secret list is written only at start-up, before other
 * threads exist, and read without locking afterwards.
 */
#include "log.h"

#include <ctype.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define LOG_LINE_MAX 4096
#define LOG_SECRETS_MAX 8
/* A bot token: the bot's numeric id, ':', then (in every token seen) 35
 * characters of the URL-safe base64 alphabet; 30 leaves room. */
#define TOKEN_ID_MIN 5
#define TOKEN_ID_MAX 20
#define TOKEN_KEY_MIN 30

static enum log_level log_level = LOG_LVL_INFO;
static int log_journal;
static char *log_secrets[LOG_SECRETS_MAX];
static pthread_mutex_t log_secrets_mu = PTHREAD_MUTEX_INITIALIZER;

static const char *const log_names[] = {
	[LOG_LVL_ERR] = "error",
	[LOG_LVL_WARN] = "warning",
	[LOG_LVL_NOTICE] = "notice",
	[LOG_LVL_INFO] = "info",
	[LOG_LVL_DEBUG] = "debug",
};

void
log_init(enum log_level level)
{
	log_level = level;
	log_journal = getenv("JOURNAL_STREAM") != NULL;
}

void
log_set_level(enum log_level level)
{
	log_level = level;
}

enum log_level
log_get_level(void)
{
	return log_level;
}

int
log_level_parse(const char *s)
{
	for (int i = LOG_LVL_ERR; i <= LOG_LVL_DEBUG; i++)
		if (strcmp(s, log_names[i]) == 0)
			return i;
	if (strcmp(s, "warn") == 0)
		return LOG_LVL_WARN;
	if (strcmp(s, "err") == 0)
		return LOG_LVL_ERR;
	return -1;
}

void
log_add_secret(const char *secret)
{
	if (secret == NULL || strlen(secret) < 4)
		return;
	pthread_mutex_lock(&log_secrets_mu);
	for (int i = 0; i < LOG_SECRETS_MAX; i++) {
		if (log_secrets[i] != NULL &&
		    strcmp(log_secrets[i], secret) == 0)
			break;
		if (log_secrets[i] == NULL) {
			log_secrets[i] = strdup(secret);
			break;
		}
	}
	pthread_mutex_unlock(&log_secrets_mu);
}

static bool
token_char(unsigned char c)
{
	return isalnum(c) || c == '_' || c == '-';
}

/* The length of a bot token starting at s (digits ':' key), or 0. */
static size_t
token_at(const char *s)
{
	size_t i = 0, k;

	while (isdigit((unsigned char)s[i]) && i <= TOKEN_ID_MAX)
		i++;
	if (i < TOKEN_ID_MIN || i > TOKEN_ID_MAX || s[i] != ':')
		return 0;
	for (k = i + 1; token_char((unsigned char)s[k]); k++)
		;
	return k - (i + 1) >= TOKEN_KEY_MIN ? k : 0;
}

/* Replaces s[0..len) by mark, shrinking the string; returns the mark's
 * length. */
static size_t
replace(char *s, size_t len, const char *mark)
{
	size_t mlen = strlen(mark);

	memmove(s + mlen, s + len, strlen(s + len) + 1);
	memcpy(s, mark, mlen);
	return mlen;
}

void
log_redact(char *s)
{
	static const char mark[] = "[redacted]";

	for (int i = 0; i < LOG_SECRETS_MAX && log_secrets[i] != NULL; i++) {
		const char *sec = log_secrets[i];
		size_t slen = strlen(sec);
		char *p = s;

		while ((p = strstr(p, sec)) != NULL) {
			if (slen >= sizeof(mark) - 1) {
				p += replace(p, slen, mark);
			} else {
				/* Shorter than the mark: blank it out. */
				memset(p, '*', slen);
				p += slen;
			}
		}
	}
	/* Any other bot's token too (one from an old configuration, or read
	 * back from the store by a command that never reads the token).  A
	 * token's digits end at a ':', so only the digits before each ':'
	 * are looked at. */
	for (char *c = s; (c = strchr(c, ':')) != NULL; ) {
		char *p = c;
		size_t len;

		while (p > s && isdigit((unsigned char)p[-1]) &&
		    c - p <= TOKEN_ID_MAX)
			p--;
		if (p < c && (p == s || !isdigit((unsigned char)p[-1])) &&
		    (len = token_at(p)) > 0)
			c = p + replace(p, len, mark);
		else
			c++;
	}
}

void
log_redact_copy(char *dst, size_t len, const char *src)
{
	char *t;

	if (len == 0)
		return;
	t = xstrdup(src != NULL ? src : "");
	log_redact(t);
	snprintf(dst, len, "%s", t);
	free(t);
}

/* The length of the valid UTF-8 sequence at s (at most n bytes), with its
 * code point in *cp; 0 if the bytes are not one (overlong, a surrogate,
 * over U+10FFFF, cut short). */
static size_t
utf8_at(const unsigned char *s, size_t n, uint32_t *cp)
{
	size_t len;
	uint32_t c, min;

	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		len = 2, c = s[0] & 0x1f, min = 0x80;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		len = 3, c = s[0] & 0x0f, min = 0x800;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		len = 4, c = s[0] & 0x07, min = 0x10000;
	} else
		return 0;
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = c << 6 | (s[i] & 0x3f);
	}
	if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*cp = c;
	return len;
}

/* Code points written as \uXXXX: C1 controls, the line and paragraph
 * separators (JavaScript and some viewers break lines there), and the
 * bidirectional overrides that make a line read other than it is. */
static bool
cp_escaped(uint32_t c)
{
	return (c >= 0x80 && c <= 0x9f) || c == 0x2028 || c == 0x2029 ||
	    c == 0x200e || c == 0x200f || (c >= 0x202a && c <= 0x202e) ||
	    (c >= 0x2066 && c <= 0x2069);
}

size_t
log_escape(char *dst, size_t len, const char *src, size_t n)
{
	const unsigned char *s = (const unsigned char *)src;
	size_t i = 0, o = 0;

	if (len == 0)
		return 0;
	while (i < n) {
		char esc[8];
		const char *out = esc;
		size_t olen, step = 1, run;
		uint32_t cp;

		/* Printable ASCII, most of any line, goes in runs. */
		for (run = 0; i + run < n && s[i + run] >= 0x20 &&
		    s[i + run] < 0x7f; run++)
			;
		if (run > 0) {
			if (run > len - 1 - o)
				run = len - 1 - o;
			memcpy(dst + o, s + i, run);
			o += run;
			i += run;
			if (o + 1 >= len)
				break;
			continue;
		}
		if (s[i] < 0x20 || s[i] == 0x7f) {
			olen = (size_t)snprintf(esc, sizeof(esc), "\\x%02x",
			    s[i]);
		} else if ((step = utf8_at(s + i, n - i, &cp)) == 0) {
			step = 1;
			olen = (size_t)snprintf(esc, sizeof(esc), "\\x%02x",
			    s[i]);
		} else if (cp_escaped(cp)) {
			olen = (size_t)snprintf(esc, sizeof(esc), "\\u%04x",
			    (unsigned)cp);
		} else {
			out = (const char *)s + i, olen = step;
		}
		if (o + olen >= len)
			break;		/* cut between characters, not in one */
		memcpy(dst + o, out, olen);
		o += olen;
		i += step;
	}
	dst[o] = '\0';
	return o;
}

void
log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
	char line[LOG_LINE_MAX], text[LOG_LINE_MAX], *msg = text;
	size_t n = 0;
	va_list aq;
	int r;

	if (level > log_level)
		return;
	if (log_journal) {
		/* syslog's priority: one digit */
		line[n++] = '<';
		line[n++] = (char)('0' + (int)level);
		line[n++] = '>';
	} else {
		/* The date and time to the second, made once a second per
		 * thread (gmtime_r and strftime cost more than the rest of
		 * a line's prefix). */
		static _Thread_local time_t stamp_sec = -1;
		static _Thread_local char stamp[32];
		static _Thread_local size_t stamp_len;
		struct timespec ts;
		struct tm tm;
		unsigned ms;
		size_t nlen = strlen(log_names[level]);

		clock_gettime(CLOCK_REALTIME, &ts);
		if (ts.tv_sec != stamp_sec) {
			gmtime_r(&ts.tv_sec, &tm);
			stamp_len = strftime(stamp, sizeof(stamp),
			    "%Y-%m-%dT%H:%M:%S", &tm);
			stamp_sec = ts.tv_sec;
		}
		memcpy(line, stamp, stamp_len);
		n = stamp_len;
		/* ".mmmZ level: " by hand: snprintf cost as much as the
		 * rest of the prefix */
		ms = (unsigned)(ts.tv_nsec / 1000000);
		line[n++] = '.';
		line[n++] = (char)('0' + ms / 100);
		line[n++] = (char)('0' + ms / 10 % 10);
		line[n++] = (char)('0' + ms % 10);
		line[n++] = 'Z';
		line[n++] = ' ';
		memcpy(line + n, log_names[level], nlen);
		n += nlen;
		line[n++] = ':';
		line[n++] = ' ';
	}
	va_copy(aq, ap);
	r = vsnprintf(text, sizeof(text), fmt, aq);
	va_end(aq);
	if (r < 0)
		return;
	/* Redaction sees the whole message (its arguments are in memory
	 * already), then the line is cut: a secret across the cut would
	 * otherwise leave its first part. */
	if ((size_t)r >= sizeof(text)) {
		msg = xmalloc((size_t)r + 1);
		vsnprintf(msg, (size_t)r + 1, fmt, ap);
	}
	log_redact(msg);
	n += log_escape(line + n, sizeof(line) - n - 1, msg, strlen(msg));
	line[n++] = '\n';
	(void)!write(STDERR_FILENO, line, n);
	if (msg != text)
		free(msg);
}

void
log_msg(enum log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}

void
fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(LOG_LVL_ERR, fmt, ap);
	va_end(ap);
	exit(1);
}
