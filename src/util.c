/*
 * util.c: the small helpers every module uses.  Allocation aborts on
 * failure (callers bound input-driven sizes first); file replacement is
 * atomic and durable (temp file, fsync, rename, fsync of the directory).
 */
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void
oom(void)
{
	static const char msg[] = "tgwebhookd: out of memory\n";

	(void)!write(2, msg, sizeof(msg) - 1);
	abort();
}

void *
xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL)
		oom();
	return p;
}

void *
xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (p == NULL)
		oom();
	return p;
}

void *
xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (p == NULL)
		oom();
	return p;
}

char *
xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

char *
xstrndup(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);

	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

char *
xasprintf(const char *fmt, ...)
{
	struct buf b = { 0 };
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		oom();
	b.cap = (size_t)n + 1;
	b.data = xmalloc(b.cap);
	va_start(ap, fmt);
	vsnprintf(b.data, b.cap, fmt, ap);
	va_end(ap);
	return b.data;
}

void
buf_reserve(struct buf *b, size_t extra)
{
	size_t need = b->len + extra + 1;

	if (need <= b->cap)
		return;
	if (b->cap == 0)
		b->cap = 64;
	while (b->cap < need)
		b->cap *= 2;
	b->data = xrealloc(b->data, b->cap);
}

void
buf_append(struct buf *b, const void *p, size_t n)
{
	buf_reserve(b, n);
	if (n > 0)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
}

void
buf_puts(struct buf *b, const char *s)
{
	buf_append(b, s, strlen(s));
}

void
buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	buf_reserve(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

char *
buf_steal(struct buf *b)
{
	char *p;

	if (b->data == NULL) {
		buf_reserve(b, 0);
		b->data[0] = '\0';
	}
	p = b->data;
	b->data = NULL;
	b->len = b->cap = 0;
	return p;
}

void
buf_free(struct buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

void
errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int64_t
wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
cond_init_monotonic(pthread_cond_t *cv)
{
	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(cv, &ca);
	pthread_condattr_destroy(&ca);
}

struct timespec
deadline_after(uint64_t ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t)(ms / 1000);
	ts.tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	return ts;
}

void
fmt_utc(int64_t t, char *out, size_t len)
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	strftime(out, len, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

char *
file_read(const char *path, size_t max, size_t *lenp, char *err, size_t errlen)
{
	struct buf b = { 0 };
	struct stat st = { 0 };
	char chunk[8192];
	ssize_t n;
	int fd;

	/* O_NONBLOCK: a FIFO (or a device) put where a file belongs must not
	 * hang the start; only regular files are read. */
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)) ==
	    -1) {
		errf(err, errlen, "%s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		errf(err, errlen, "%s: %s", path, S_ISDIR(st.st_mode) ?
		    "is a directory, not a file" : "not a regular file (a "
		    "FIFO, socket or device): name the file itself");
		goto fail;
	}
	for (;;) {
		n = read(fd, chunk, sizeof(chunk));
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			errf(err, errlen, "%s: read: %s", path,
			    strerror(errno));
			goto fail;
		}
		if (n == 0)
			break;
		if (b.len + (size_t)n > max) {
			errf(err, errlen, "%s: larger than %zu bytes", path,
			    max);
			goto fail;
		}
		buf_append(&b, chunk, (size_t)n);
	}
	close(fd);
	if (lenp != NULL)
		*lenp = b.len;
	return buf_steal(&b);
fail:
	close(fd);
	buf_free(&b);
	return NULL;
}

int
file_write_atomic(const char *path, const void *data, size_t len,
    unsigned mode, char *err, size_t errlen)
{
	char *tmp = xasprintf("%s.tmp.XXXXXX", path);
	char *dcopy = xstrdup(path);
	const char *p = data;
	int fd = -1, dfd = -1, rc = -1;

	/* A new file of a name nobody can guess (mkostemp: O_CREAT|O_EXCL,
	 * mode 0600): a file planted in advance under a predictable name
	 * would otherwise be opened, written and renamed, and whoever
	 * planted it would own what we wrote (a private key). */
	if ((fd = mkostemp(tmp, O_CLOEXEC)) == -1) {
		errf(err, errlen, "%s: %s", tmp, strerror(errno));
		free(tmp);
		tmp = NULL;
		goto out;
	}
	/* open() honours the umask; make the mode exact (a key stays 0600
	 * whatever umask we were started with). */
	if (fchmod(fd, mode) == -1) {
		errf(err, errlen, "fchmod %s: %s", tmp, strerror(errno));
		goto out;
	}
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			errf(err, errlen, "write %s: %s", tmp, strerror(errno));
			goto out;
		}
		p += n;
		len -= (size_t)n;
	}
	if (fsync(fd) == -1) {
		errf(err, errlen, "fsync %s: %s", tmp, strerror(errno));
		goto out;
	}
	if (close(fd) == -1) {
		fd = -1;
		errf(err, errlen, "close %s: %s", tmp, strerror(errno));
		goto out;
	}
	fd = -1;
	if (rename(tmp, path) == -1) {
		errf(err, errlen, "rename %s to %s: %s", tmp, path,
		    strerror(errno));
		goto out;
	}
	/* The rename is durable only once the directory entry is. */
	if ((dfd = open(dirname(dcopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) !=
	    -1) {
		(void)fsync(dfd);
		close(dfd);
	}
	rc = 0;
out:
	if (fd != -1) {
		close(fd);
	}
	if (rc == -1 && tmp != NULL)
		unlink(tmp);
	free(tmp);
	free(dcopy);
	return rc;
}

int
dir_ensure(const char *path, unsigned mode, char *err, size_t errlen)
{
	char *copy = xstrdup(path);
	struct stat st;
	char *p;
	int rc = -1;

	for (p = copy + 1; ; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char save = *p;
		*p = '\0';
		if (mkdir(copy, mode) == -1 && errno != EEXIST) {
			errf(err, errlen, "mkdir %s: %s", copy,
			    strerror(errno));
			goto out;
		}
		*p = save;
		if (save == '\0')
			break;
	}
	if (stat(path, &st) == -1 || !S_ISDIR(st.st_mode)) {
		errf(err, errlen, "%s: not a directory", path);
		goto out;
	}
	rc = 0;
out:
	free(copy);
	return rc;
}

/* Owned by root or by uid: nobody else can change it. */
static bool
owner_ok(uid_t owner, uid_t uid)
{
	return owner == 0 || owner == uid;
}

int
file_check_trusted(const char *path, int fd, uid_t uid, char *err,
    size_t errlen)
{
	struct stat st;
	char *real = NULL, *slash;
	int rc = -1;

	if ((fd == -1 ? stat(path, &st) : fstat(fd, &st)) == -1) {
		errf(err, errlen, "%s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		errf(err, errlen, "%s: not a regular file", path);
		goto out;
	}
	if (!owner_ok(st.st_uid, uid)) {
		errf(err, errlen, "%s: owned by uid %ld, not by root or the "
		    "daemon's user (uid %ld): its owner could change the code "
		    "tgwebhookd runs; chown root it", path, (long)st.st_uid,
		    (long)uid);
		goto out;
	}
	if (st.st_mode & (S_IWGRP | S_IWOTH)) {
		errf(err, errlen, "%s: writable by group or others (mode "
		    "%04o): anyone who can write it runs code as tgwebhookd; "
		    "chmod go-w it", path, (unsigned)(st.st_mode & 07777));
		goto out;
	}
	if ((real = realpath(path, NULL)) == NULL) {
		errf(err, errlen, "%s: %s", path, strerror(errno));
		goto out;
	}
	/*
	 * Whoever may write a directory on the way may put another file
	 * in its place.  A sticky directory (/tmp) is fine: there only
	 * the owner of a name may replace it.  Group write is fine for
	 * group root.
	 */
	while ((slash = strrchr(real, '/')) != NULL) {
		const char *dir = slash == real ? "/" : real;

		slash[slash == real ? 1 : 0] = '\0';
		if (stat(dir, &st) == -1) {
			errf(err, errlen, "%s: %s", dir, strerror(errno));
			goto out;
		}
		if (!owner_ok(st.st_uid, uid) || (!(st.st_mode & S_ISVTX) &&
		    ((st.st_mode & S_IWOTH) || ((st.st_mode & S_IWGRP) &&
		    st.st_gid != 0)))) {
			errf(err, errlen, "%s: its directory %s is owned by "
			    "uid %ld with mode %04o: only root or the daemon's "
			    "user (uid %ld) may be able to change what is in "
			    "it; chown root and chmod go-w the directory, or "
			    "move the file", path, dir, (long)st.st_uid,
			    (unsigned)(st.st_mode & 07777), (long)uid);
			goto out;
		}
		if (slash == real)
			break;
	}
	rc = 0;
out:
	free(real);
	return rc;
}

int
file_check_private(const char *path, bool follow, uid_t uid, char *err,
    size_t errlen)
{
	struct stat st;
	mode_t bad;

	if ((follow ? stat(path, &st) : lstat(path, &st)) == -1) {
		if (errno == ENOENT)
			return 1;
		errf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (S_ISLNK(st.st_mode)) {
		errf(err, errlen, "%s is a symbolic link: the daemon's own "
		    "files are regular files; remove it", path);
		return -1;
	}
	if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
		errf(err, errlen, "%s: not a regular file or directory; remove "
		    "it", path);
		return -1;
	}
	/* Another name of another file (a hard link to /etc/shadow): what
	 * is done to it as root (SQLite fchowns its journals to the
	 * database's owner) would be done to that file. */
	if (!follow && S_ISREG(st.st_mode) && st.st_nlink != 1) {
		errf(err, errlen, "%s has %ju names (hard links): the daemon's "
		    "own files have one; remove it", path,
		    (uintmax_t)st.st_nlink);
		return -1;
	}
	if (!owner_ok(st.st_uid, uid)) {
		errf(err, errlen, "%s is owned by uid %ld, not by root or the "
		    "daemon's user (uid %ld): chown it to the daemon's user",
		    path, (long)st.st_uid, (long)uid);
		return -1;
	}
	/* A directory others may list is fine (the names are no secret);
	 * one they may write is not.  A file: the token's rule. */
	bad = S_ISDIR(st.st_mode) ? S_IWGRP | S_IWOTH :
	    S_IWGRP | S_IROTH | S_IWOTH;
	if (st.st_mode & bad) {
		errf(err, errlen, "%s has mode %04o: %s by other users; chmod "
		    "%s %s (%s)", path, (unsigned)(st.st_mode & 07777),
		    S_ISDIR(st.st_mode) ? "writable" : "readable or writable",
		    S_ISDIR(st.st_mode) ? "go-w" : "g-w,o-rw", path,
		    S_ISDIR(st.st_mode) ? "0700" : "0600, or 0640 with the "
		    "daemon's group");
		return -1;
	}
	return 0;
}

char *
str_trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' ||
	    e[-1] == '\r'))
		*--e = '\0';
	return s;
}

bool
str_is_digits(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s != '\0'; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

char **
strlist_split(const char *s, size_t *np)
{
	char **list = xcalloc(strlen(s) / 2 + 2, sizeof(*list));
	size_t n = 0;

	while (*s != '\0') {
		size_t len;

		while (*s == ',' || isspace((unsigned char)*s))
			s++;
		len = strcspn(s, ", \t\r\n");
		if (len == 0)
			break;
		list[n++] = xstrndup(s, len);
		s += len;
	}
	list[n] = NULL;
	if (np != NULL)
		*np = n;
	return list;
}

void
strlist_free(char **list)
{
	if (list == NULL)
		return;
	for (char **p = list; *p != NULL; p++)
		free(*p);
	free(list);
}
