/*
 * util.h: allocation that aborts on failure, growable byte buffers, small
 * string and time helpers, and whole-file I/O with atomic replacement.
 */
#ifndef TGW_UTIL_H
#define TGW_UTIL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#define nitems(a) (sizeof(a) / sizeof((a)[0]))

/* Allocation failure aborts: every size that input controls is capped
 * before it reaches these. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* A formatted, allocated string; the caller frees it. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A growable byte buffer, always NUL-terminated after len bytes. */
struct buf {
	char *data;
	size_t len;
	size_t cap;
};
/* Makes room for extra more bytes. */
void buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *p, size_t n);
void buf_puts(struct buf *b, const char *s);
void buf_printf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Hands over data (never NULL) and leaves b empty. */
char *buf_steal(struct buf *b);
void buf_free(struct buf *b);

/* snprintf into an error buffer; does nothing if err is NULL. */
void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Monotonic and wall clocks in milliseconds. */
uint64_t now_ms(void);
int64_t wall_ms(void);

/* A condition variable timed on the monotonic clock (immune to the wall
 * clock being set), and the absolute time `ms` from now for its waits. */
void cond_init_monotonic(pthread_cond_t *cv);
struct timespec deadline_after(uint64_t ms);

/* Unix seconds as "2026-11-25 04:00:00 UTC". */
void fmt_utc(int64_t t, char *out, size_t len);

/* Reads a whole file of at most max bytes into a NUL-terminated buffer.
 * Returns it (caller frees) or NULL with err filled. */
char *file_read(const char *path, size_t max, size_t *lenp, char *err,
    size_t errlen);
/* Replaces path with data atomically: a temporary file in the same
 * directory is written, fsynced and renamed over path, then the directory
 * is fsynced, so that a crash leaves either the old file or the new one,
 * never a torn one.  mode is applied before any data is written. */
int file_write_atomic(const char *path, const void *data, size_t len,
    unsigned mode, char *err, size_t errlen);
/* Creates a directory (and its parents) with mode if missing. */
int dir_ensure(const char *path, unsigned mode, char *err, size_t errlen);

/* Whether the file at path (open on fd, or -1 to look it up) may be run as
 * code by a daemon of user uid: a regular file owned by root or uid, not
 * writable by group or others, and every directory on its resolved path
 * owned by root or uid and not writable by others (sticky ones excepted)
 * nor by a group other than root.  0, or -1 with err saying what to do. */
int file_check_trusted(const char *path, int fd, uid_t uid, char *err,
    size_t errlen);
/* Whether path may hold the daemon's secrets: owned by root or uid, a
 * directory not writable by group or others, a file not writable by group
 * nor readable or writable by others; with follow = false a symbolic link
 * or a file of several names (hard links) is refused.  0, 1 when it does
 * not exist, or -1 with err. */
int file_check_private(const char *path, bool follow, uid_t uid, char *err,
    size_t errlen);

/* Strips leading and trailing ASCII whitespace in place; returns s. */
char *str_trim(char *s);
/* Splits s on commas and whitespace into a NULL-terminated array of
 * copies; *n (if not NULL) gets the count.  Free with strlist_free. */
char **strlist_split(const char *s, size_t *n);
void strlist_free(char **list);
/* True if s is a non-empty string of ASCII digits. */
bool str_is_digits(const char *s);

#endif
