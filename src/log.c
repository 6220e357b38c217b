/*
 * log.c: one write(2) per line so that lines from concurrent threads never
 * interleave.  Redaction runs on the finished line, so a secret cannot
 * slip through a library's error text or a URL.  The secret list is
 * written only at start-up, before other threads exist, and read without
 * locking afterwards.
 */
#include "log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096
#define LOG_SECRETS_MAX 8

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

void
log_redact(char *s)
{
	static const char mark[] = "[redacted]";

	for (int i = 0; i < LOG_SECRETS_MAX && log_secrets[i] != NULL; i++) {
		const char *sec = log_secrets[i];
		size_t slen = strlen(sec);
		char *p = s;

		while ((p = strstr(p, sec)) != NULL) {
			size_t tail = strlen(p + slen);

			if (slen >= sizeof(mark) - 1) {
				memcpy(p, mark, sizeof(mark) - 1);
				memmove(p + sizeof(mark) - 1, p + slen,
				    tail + 1);
				p += sizeof(mark) - 1;
			} else {
				/* Shorter than the mark: blank it out. */
				memset(p, '*', slen);
				p += slen;
			}
		}
	}
}

void
log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
	char line[LOG_LINE_MAX];
	size_t n = 0;
	int r;

	if (level > log_level)
		return;
	if (log_journal) {
		n = (size_t)snprintf(line, sizeof(line), "<%d>", (int)level);
	} else {
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
		n += (size_t)snprintf(line + n, sizeof(line) - n,
		    ".%03ldZ %s: ", ts.tv_nsec / 1000000, log_names[level]);
	}
	r = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	if (r < 0)
		return;
	n += (size_t)r;
	if (n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	/* One line per message: a newline inside would let input forge
	 * log lines. */
	for (size_t i = 0; i < n; i++)
		if (line[i] == '\n' || line[i] == '\r')
			line[i] = ' ';
	line[n] = '\0';
	log_redact(line);
	n = strlen(line);
	line[n++] = '\n';
	(void)!write(STDERR_FILENO, line, n);
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
