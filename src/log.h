/*
 * log.h: levelled logging to stderr.  Under journald (JOURNAL_STREAM set)
 * every line starts with a <N> priority prefix so that `journalctl -p`
 * filters work; elsewhere it starts with a timestamp.  Every registered
 * secret (the bot token, the webhook secret and path) is replaced by
 * "[redacted]" in every line, whoever wrote it, and every character that
 * is not printable is escaped (log_escape()): one message, one line.
 */
#ifndef TGW_LOG_H
#define TGW_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum log_level {
	LOG_LVL_ERR = 3,
	LOG_LVL_WARN = 4,
	LOG_LVL_NOTICE = 5,
	LOG_LVL_INFO = 6,
	LOG_LVL_DEBUG = 7,
};

/* Sets the lowest level written (default info) and picks the output
 * format from the environment. */
void log_init(enum log_level level);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parses "error", "warning", "notice", "info", "debug"; -1 if unknown. */
int log_level_parse(const char *s);
/* Registers a string never to be written (copied; up to 8, at least 4
 * bytes long). */
void log_add_secret(const char *secret);
/* Redacts every registered secret in s, and anything shaped like a bot
 * token (digits ':' 30 or more of A-Z a-z 0-9 _ -), in place, shrinking
 * it. */
void log_redact(char *s);
/* Copies src, redacted, into dst (len bytes, NUL-terminated): redacted
 * whole first, then cut, so a secret across the cut leaves nothing. */
void log_redact_copy(char *dst, size_t len, const char *src);
/* Writes the n bytes of src into dst (len bytes, NUL-terminated) with
 * everything not printable escaped: C0 controls and DEL and bytes that
 * are not valid UTF-8 as \xHH; C1 controls, U+2028, U+2029 and the
 * bidirectional controls as \uXXXX.  Valid printable UTF-8 is kept.  Cuts
 * between characters when dst is full.  Returns the length written. */
size_t log_escape(char *dst, size_t len, const char *src, size_t n);

void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void log_vmsg(enum log_level level, const char *fmt, va_list ap);

#define log_err(...) log_msg(LOG_LVL_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_LVL_NOTICE, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LVL_DEBUG, __VA_ARGS__)

/* Logs at error level and exits 1: only before the daemon is ready. */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
