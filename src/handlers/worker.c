/*
 * handlers/worker.c: long-running handler processes in any language.
 *
 * Protocol (README "Worker handlers"): the worker reads one Update per
 * line on stdin and answers each with exactly one line on stdout: a JSON
 * array of Bot API calls ([] for none), or {"error": "why"} to make the
 * update a dead letter.  With state_io = on the line is an envelope,
 * {"update": Update, "state": {"name": ..., "data": {...}}} ("state":
 * null when the update has no conversation), and the array may hold one
 * {"state": ...} element: the new state.  stderr is its log.  It gets the
 * same small environment as exec handlers, without the per-update
 * variables, plus TGW_WORKER (its index in the pool).
 *
 * A pool of `workers` processes serves a handler.  An update takes an idle
 * worker (waiting at most `timeout` for one), writes its line and reads the
 * answer, all within `timeout`.  With `affinity = chat` (the default) every
 * update of a chat goes to the same worker (chat id modulo the pool size),
 * so a worker may keep per-chat state in memory and sees a chat's updates
 * one at a time; `affinity = none` takes any idle worker.  A worker that dies, overruns the timeout,
 * writes more than one line or a line over 1 MiB is killed (its whole
 * process group) and its update becomes a dead letter; a worker whose
 * answer is merely wrong JSON stays, in step, and only that update fails.
 * A worker that writes while no update is asking (a second line a moment
 * after its answer) is out of step: that is seen before it is given the
 * next update, and it is killed and restarted first, so that a stray
 * line never becomes the next update's answer.
 *
 * Each pool has a supervisor thread: it starts the workers, logs their
 * stderr, reaps them (a pidfd per worker, or waitpid(WNOHANG) every
 * 100 ms where pidfds are missing) and restarts them with
 * exponential backoff (0.1 s doubling to 30 s; back to 0.1 s once a worker
 * has lived 10 s).  While a worker is busy its stdin and stdout belong to
 * the thread handling the update; everything else is the supervisor's,
 * and the pool's mutex guards the state both look at.
 *
 * Pools are shared by identity (handler name, program and arguments, pool
 * size, timeout): a reload that leaves a worker section unchanged keeps
 * its processes running; a changed one gets a new pool, and the old pool
 * stops once the old table is no longer used.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "calls.h"
#include "handler.h"
#include "log.h"
#include "metrics.h"
#include "proc.h"
#include "state.h"
#include "update.h"
#include "util.h"

#define WORKER_LINE_MAX (1 << 20)
#define WORKER_LOG_LINE_MAX 4000
#define WORKER_DEFAULT_TIMEOUT_MS 5000
#define WORKER_MAX 256
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 30000
#define STABLE_MS 10000
#define STOP_GRACE_MS 2000
#define POLL_EXITS_MS 100	/* without pidfds: how often to look */

struct wproc {
	unsigned index;
	struct proc p;		/* p.pid == -1: not running */
	int pidfd;
	bool busy;		/* an update owns p.in and p.out */
	bool reaped;		/* exited while busy: its owner closes up */
	uint64_t started, restart_at;
	unsigned backoff_ms;
	struct buf log;		/* a stderr line being read */
};

struct pool {
	struct pool *next;	/* registry */
	int refs;		/* registry's lock */
	char *key;
	char *name;
	char **argv;
	unsigned n, timeout_ms;
	bool by_chat;		/* affinity = chat */
	bool state_io;		/* state_io = on: envelopes in, a state
				 * out */

	pthread_mutex_t mu;
	pthread_cond_t idle;	/* a worker became free */
	struct wproc *w;
	int wake[2];
	pthread_t supervisor;
	bool started, stopping;
	bool polling;		/* no pidfds here: waitpid(WNOHANG) */
};

static const char *const worker_keys[] = { "workers", "timeout", "affinity",
	"state_io", NULL };

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static struct pool *registry;

/* The wait before the next start: doubling from BACKOFF_MIN_MS up to
 * BACKOFF_MAX_MS, back to the minimum after a stable run. */
static unsigned
next_backoff(unsigned cur, bool stable)
{
	if (stable || cur == 0)
		return BACKOFF_MIN_MS;
	return cur >= BACKOFF_MAX_MS / 2 ? BACKOFF_MAX_MS : cur * 2;
}

static int
pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

static void
wake(struct pool *pl)
{
	ssize_t n = write(pl->wake[1], "", 1);

	(void)n;	/* a full pipe wakes it just as well */
}

/* The worker's environment: the exec protocol's, without the update. */
static char **
worker_env(const struct pool *pl, unsigned index)
{
	char **env = xcalloc(6, sizeof(*env));

	env[0] = xstrdup("PATH=/usr/local/bin:/usr/bin:/bin");
	env[1] = xstrdup("LANG=C.UTF-8");
	env[2] = xstrdup("PYTHONUNBUFFERED=1");
	env[3] = xasprintf("TGW_HANDLER=%s", pl->name);
	env[4] = xasprintf("TGW_WORKER=%u", index);
	return env;
}

/* Under pl->mu. */
static void
start_worker(struct pool *pl, struct wproc *w, uint64_t now)
{
	char err[256], **env = worker_env(pl, w->index);

	if (proc_spawn(pl->argv, env, &w->p, err, sizeof(err)) == 0 &&
	    (w->pidfd = pidfd_open_(w->p.pid)) == -1 && !pl->polling) {
		/* No pidfd (a kernel before 5.3, valgrind, some sandboxes):
		 * watch for exits with waitpid(WNOHANG) instead. */
		log_info("handler %s: pidfd_open: %s: checking for exited "
		    "workers every %dms instead", pl->name, strerror(errno),
		    POLL_EXITS_MS);
		pl->polling = true;
	}
	strlist_free(env);
	if (w->p.pid == -1) {
		w->backoff_ms = next_backoff(w->backoff_ms, false);
		w->restart_at = now + w->backoff_ms;
		log_err("handler %s: worker %u: %s; trying again in %ums",
		    pl->name, w->index, err, w->backoff_ms);
		return;
	}
	w->started = now;
	log_info("handler %s: worker %u started (pid %d)", pl->name, w->index,
	    (int)w->p.pid);
	pthread_cond_broadcast(&pl->idle);
}

static void
log_line(struct pool *pl, struct wproc *w)
{
	if (w->log.len > 0)
		log_notice("handler %s: worker %u: %.*s", pl->name, w->index,
		    (int)w->log.len, w->log.data);
	w->log.len = 0;
}

/* Reads w's stderr and logs it line by line.  Only the supervisor
 * touches p.err and the log buffer: no lock needed. */
static void
read_stderr(struct pool *pl, struct wproc *w)
{
	char chunk[4096];
	ssize_t n;

	while ((n = read(w->p.err, chunk, sizeof(chunk))) > 0)
		for (ssize_t i = 0; i < n; i++) {
			if (chunk[i] == '\n' ||
			    w->log.len >= WORKER_LOG_LINE_MAX)
				log_line(pl, w);
			if (chunk[i] != '\n')
				buf_append(&w->log, &chunk[i], 1);
		}
	if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
		log_line(pl, w);
		proc_close(&w->p.err);
	}
}

/* w has exited with status (already waited for): plan its restart.
 * Under pl->mu. */
static void
reaped(struct pool *pl, struct wproc *w, uint64_t now, int status)
{
	char how[128];
	int pid = (int)w->p.pid;

	kill(-w->p.pid, SIGKILL);	/* what it started goes with it */
	if (w->p.err != -1)
		read_stderr(pl, w);
	log_line(pl, w);
	proc_status(status, how, sizeof(how));
	proc_close(&w->pidfd);
	proc_close(&w->p.err);
	w->p.pid = -1;
	if (w->busy)
		w->reaped = true;
	else {
		proc_close(&w->p.in);
		proc_close(&w->p.out);
	}
	w->backoff_ms = next_backoff(w->backoff_ms,
	    now - w->started >= STABLE_MS);
	w->restart_at = now + w->backoff_ms;
	if (!pl->stopping) {
		metrics_worker_exit();
		log_warn("handler %s: worker %u (pid %d) %s; restarting in "
		    "%ums", pl->name, w->index, pid, how, w->backoff_ms);
	}
}

/* Reaps w if it has exited (wait: until it has, killing it first).
 * True if it was reaped.  Under pl->mu. */
static bool
reap(struct pool *pl, struct wproc *w, uint64_t now, bool wait)
{
	int status = 0;
	pid_t r;

	if (wait)
		kill(-w->p.pid, SIGKILL);
	while ((r = waitpid(w->p.pid, &status, wait ? 0 : WNOHANG)) == -1 &&
	    errno == EINTR)
		;
	if (r != w->p.pid)
		return false;
	reaped(pl, w, now, status);
	return true;
}

static void *
supervise(void *arg)
{
	struct pool *pl = arg;
	struct pollfd *pfd = xcalloc(2 * pl->n + 1, sizeof(*pfd));
	struct wproc **of = xcalloc(2 * pl->n + 1, sizeof(*of));

	pthread_mutex_lock(&pl->mu);
	while (!pl->stopping) {
		uint64_t now = now_ms(), next = now + 60000;
		nfds_t n = 0;

		for (unsigned i = 0; i < pl->n; i++) {
			struct wproc *w = &pl->w[i];

			if (w->p.pid == -1 && !w->busy && w->p.in == -1) {
				if (now >= w->restart_at)
					start_worker(pl, w, now);
				if (w->p.pid == -1 && w->restart_at < next)
					next = w->restart_at;
			}
			if (w->p.pid != -1 && w->pidfd == -1 &&
			    now + POLL_EXITS_MS < next)
				next = now + POLL_EXITS_MS;
		}
		pfd[n] = (struct pollfd){ pl->wake[0], POLLIN, 0 };
		of[n++] = NULL;
		for (unsigned i = 0; i < pl->n; i++) {
			struct wproc *w = &pl->w[i];

			if (w->p.pid == -1)
				continue;
			if (w->pidfd != -1) {
				pfd[n] = (struct pollfd){ w->pidfd, POLLIN, 0 };
				of[n++] = w;
			}
			if (w->p.err != -1) {
				pfd[n] = (struct pollfd){ w->p.err, POLLIN, 0 };
				of[n++] = w;
			}
		}
		pthread_mutex_unlock(&pl->mu);
		poll(pfd, n, (int)(next - now));
		/* Logs are read unlocked: a chatty worker does not hold up
		 * the updates of the others. */
		for (nfds_t i = 0; i < n; i++)
			if (of[i] != NULL && pfd[i].revents != 0 &&
			    pfd[i].fd == of[i]->p.err)
				read_stderr(pl, of[i]);
		pthread_mutex_lock(&pl->mu);
		now = now_ms();
		for (nfds_t i = 0; i < n; i++) {
			struct wproc *w = of[i];

			if (pfd[i].revents == 0)
				continue;
			if (w == NULL) {
				char drain[64];

				while (read(pl->wake[0], drain, sizeof(drain)) >
				    0)
					;
			} else if (w->p.pid != -1 && pfd[i].fd == w->pidfd)
				reap(pl, w, now, true);
		}
		for (unsigned i = 0; i < pl->n; i++)
			if (pl->w[i].p.pid != -1 && pl->w[i].pidfd == -1)
				reap(pl, &pl->w[i], now, false);
	}
	pthread_mutex_unlock(&pl->mu);
	free(pfd);
	free(of);
	return NULL;
}

/* Stops every worker: EOF on stdin first, SIGKILL after the grace time. */
static void
stop_workers(struct pool *pl)
{
	uint64_t until = now_ms() + STOP_GRACE_MS;

	for (unsigned i = 0; i < pl->n; i++)
		proc_close(&pl->w[i].p.in);
	for (unsigned i = 0; i < pl->n; i++) {
		struct wproc *w = &pl->w[i];

		while (w->p.pid != -1 && now_ms() < until) {
			struct pollfd pfd = { w->pidfd, POLLIN, 0 };
			uint64_t now = now_ms();

			if (w->pidfd == -1) {
				if (!reap(pl, w, now, false))
					usleep(10000);
			} else if (poll(&pfd, 1, (int)(until - now)) > 0)
				reap(pl, w, now_ms(), true);
		}
		if (w->p.pid != -1) {
			log_warn("handler %s: worker %u (pid %d) did not exit "
			    "within %dms of its stdin closing: killed",
			    pl->name, w->index, (int)w->p.pid, STOP_GRACE_MS);
			reap(pl, w, now_ms(), true);
		}
		proc_close(&w->p.in);
		proc_close(&w->p.out);
		buf_free(&w->log);
	}
}

static void
pool_free(struct pool *pl)
{
	if (pl->started) {
		pthread_mutex_lock(&pl->mu);
		pl->stopping = true;
		pthread_cond_broadcast(&pl->idle);
		pthread_mutex_unlock(&pl->mu);
		wake(pl);
		pthread_join(pl->supervisor, NULL);
		stop_workers(pl);
		log_info("handler %s: workers stopped", pl->name);
	}
	for (unsigned i = 0; i < pl->n; i++)
		buf_free(&pl->w[i].log);
	free(pl->w);
	proc_close(&pl->wake[0]);
	proc_close(&pl->wake[1]);
	pthread_cond_destroy(&pl->idle);
	pthread_mutex_destroy(&pl->mu);
	strlist_free(pl->argv);
	free(pl->name);
	free(pl->key);
	free(pl);
}

static void
worker_destroy(void *arg)
{
	struct pool *pl = arg, **pp;

	if (pl == NULL)
		return;
	pthread_mutex_lock(&registry_mu);
	if (--pl->refs > 0) {
		pthread_mutex_unlock(&registry_mu);
		return;
	}
	for (pp = &registry; *pp != NULL; pp = &(*pp)->next)
		if (*pp == pl) {
			*pp = pl->next;
			break;
		}
	pthread_mutex_unlock(&registry_mu);
	pool_free(pl);
}

static void *
worker_create(const struct conf_handler *h, const struct config *c,
    struct diag *d)
{
	unsigned n = 1, timeout_ms = WORKER_DEFAULT_TIMEOUT_MS;
	bool by_chat = true;
	int before = d->count, io;
	const char *v;
	char **argv, *key;
	struct buf k = { 0 };
	struct pool *pl;
	int line;

	argv = proc_argv(h, c, "worker", d);
	proc_timeout(h, c, &timeout_ms, d);
	io = handler_conf_state_io(h, c, d);
	if ((v = handler_conf_get(h, "workers", &line)) != NULL) {
		char *end;
		unsigned long x;

		errno = 0;
		x = strtoul(v, &end, 10);
		if (!str_is_digits(v) || errno != 0 || *end != '\0' || x < 1 ||
		    x > WORKER_MAX)
			diag_add(d, c->file, line, "workers", "'%s': must be a "
			    "whole number, 1..%d", v, WORKER_MAX);
		n = (unsigned)x;
	}
	if ((v = handler_conf_get(h, "affinity", &line)) != NULL) {
		if (strcmp(v, "chat") != 0 && strcmp(v, "none") != 0)
			diag_add(d, c->file, line, "affinity", "'%s': chat (a "
			    "chat's updates always go to the same worker) or "
			    "none (any idle worker)", v);
		by_chat = strcmp(v, "chat") == 0;
	}
	if (d->count > before) {
		strlist_free(argv);
		return NULL;
	}
	/* state_io changes the line protocol: a new pool */
	buf_printf(&k, "%s\n%u\n%u\n%d\n%d", h->name, n, timeout_ms, by_chat,
	    io);
	for (char **a = argv; *a != NULL; a++)
		buf_printf(&k, "\n%s", *a);
	key = buf_steal(&k);

	pthread_mutex_lock(&registry_mu);
	for (pl = registry; pl != NULL; pl = pl->next)
		if (strcmp(pl->key, key) == 0)
			break;
	if (pl != NULL) {
		pl->refs++;
		pthread_mutex_unlock(&registry_mu);
		free(key);
		strlist_free(argv);
		return pl;
	}
	pl = xcalloc(1, sizeof(*pl));
	pl->refs = 1;
	pl->key = key;
	pl->name = xstrdup(h->name);
	pl->argv = argv;
	pl->n = n;
	pl->timeout_ms = timeout_ms;
	pl->by_chat = by_chat;
	pl->state_io = io == 1;
	pthread_mutex_init(&pl->mu, NULL);
	cond_init_monotonic(&pl->idle);
	pl->w = xcalloc(n, sizeof(*pl->w));
	for (unsigned i = 0; i < n; i++)
		pl->w[i] = (struct wproc){ .index = i,
		    .p = { -1, -1, -1, -1 }, .pidfd = -1 };
	if (pipe2(pl->wake, O_CLOEXEC | O_NONBLOCK) == -1) {
		diag_add(d, c->file, h->line, "worker", "pipe: %s",
		    strerror(errno));
		pthread_mutex_unlock(&registry_mu);
		pl->wake[0] = pl->wake[1] = -1;
		pool_free(pl);
		return NULL;
	}
	pl->next = registry;
	registry = pl;
	pthread_mutex_unlock(&registry_mu);
	return pl;
}

static void
worker_start(void *arg)
{
	struct pool *pl = arg;

	pthread_mutex_lock(&pl->mu);
	if (!pl->started &&
	    pthread_create(&pl->supervisor, NULL, supervise, pl) == 0)
		pl->started = true;
	else if (!pl->started)
		log_err("handler %s: cannot start its supervisor thread",
		    pl->name);
	pthread_mutex_unlock(&pl->mu);
}

/* Waits for fd to be ready for events until deadline: 1 ready, 0 timed
 * out, -1 error. */
static int
wait_fd(int fd, short events, uint64_t deadline)
{
	for (;;) {
		struct pollfd pfd = { fd, events, 0 };
		uint64_t now = now_ms();
		int rc;

		if (now >= deadline)
			return 0;
		rc = poll(&pfd, 1, (int)(deadline - now));
		if (rc > 0)
			return 1;
		if (rc == -1 && errno != EINTR)
			return -1;
	}
}

/* Writes the update as one line.  0; -1 with msg; -2 at the deadline. */
static int
send_line(int fd, const char *body, size_t len, uint64_t deadline, char *msg,
    size_t msglen)
{
	struct iovec iov[2] = { { (void *)(uintptr_t)body, len },
	    { (void *)(uintptr_t)"\n", 1 } };
	int i = 0;

	while (i < 2) {
		ssize_t w = writev(fd, &iov[i], 2 - i);

		if (w >= 0) {
			while (i < 2 && (size_t)w >= iov[i].iov_len)
				w -= (ssize_t)iov[i++].iov_len;
			if (i < 2) {
				iov[i].iov_base = (char *)iov[i].iov_base + w;
				iov[i].iov_len -= (size_t)w;
			}
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN) {
			errf(msg, msglen, "the worker's stdin is closed "
			    "(%s)", strerror(errno));
			return -1;
		}
		if (wait_fd(fd, POLLOUT, deadline) != 1)
			return -2;
	}
	return 0;
}

/* Reads one line into b (without its newline, NUL-terminated).  0; -1
 * with msg (the worker is out of step: kill it); -2 at the deadline. */
static int
read_line(int fd, struct buf *b, uint64_t deadline, char *msg, size_t msglen)
{
	char chunk[16384];

	for (;;) {
		ssize_t n = read(fd, chunk, sizeof(chunk));

		if (n > 0) {
			char *nl = memchr(chunk, '\n', (size_t)n);
			size_t take = nl != NULL ? (size_t)(nl - chunk) :
			    (size_t)n;

			if (b->len + take > WORKER_LINE_MAX) {
				errf(msg, msglen, "answered with a line over "
				    "%d bytes", WORKER_LINE_MAX);
				return -1;
			}
			buf_append(b, chunk, take);
			if (nl == NULL)
				continue;
			if (nl + 1 != chunk + n) {
				errf(msg, msglen, "wrote more than one line "
				    "for one update");
				return -1;
			}
			buf_append(b, "", 1);
			b->len--;
			return 0;
		}
		if (n == 0) {
			errf(msg, msglen, "exited (closed its stdout) while "
			    "handling this update");
			return -1;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN) {
			errf(msg, msglen, "read: %s", strerror(errno));
			return -1;
		}
		if (wait_fd(fd, POLLIN, deadline) != 1)
			return -2;
	}
}

/* Takes an idle worker (worker `want`, or any if want is -1), waiting
 * until deadline.  Under pl->mu. */
static struct wproc *
take(struct pool *pl, int want, uint64_t deadline)
{
	struct timespec ts = deadline_after(deadline - now_ms());

	for (;;) {
		for (unsigned i = 0; i < pl->n; i++) {
			struct wproc *w = &pl->w[i];

			if (want != -1 && i != (unsigned)want)
				continue;
			if (w->p.pid != -1 && w->p.in != -1 && !w->busy) {
				w->busy = true;
				return w;
			}
		}
		if (pl->stopping || now_ms() >= deadline ||
		    pthread_cond_timedwait(&pl->idle, &pl->mu, &ts) ==
		    ETIMEDOUT)
			return NULL;
	}
}

/* Gives w back to the pool; kill_it: it is out of step, so kill it (the
 * supervisor reaps and restarts it). */
static void
release(struct pool *pl, struct wproc *w, bool kill_it)
{
	pthread_mutex_lock(&pl->mu);
	w->busy = false;
	if (kill_it && w->p.pid != -1)
		kill(-w->p.pid, SIGKILL);	/* the supervisor reaps it */
	if (w->reaped || kill_it) {
		/* Nothing more is read from or written to this process. */
		proc_close(&w->p.in);
		proc_close(&w->p.out);
		w->reaped = false;
		wake(pl);
	}
	/* With affinity, a waiter may want this worker and no other. */
	pthread_cond_broadcast(&pl->idle);
	pthread_mutex_unlock(&pl->mu);
}

/*
 * True if idle w has written something no update asked for (a line after
 * its answer, a moment late) or closed its stdout.  Its next line would
 * then answer the wrong update, and every later update the one before
 * it: such a worker is out of step and must not get another update.
 * Logged with what it wrote.
 */
static bool
out_of_step(struct pool *pl, struct wproc *w)
{
	struct pollfd pfd = { w->p.out, POLLIN, 0 };
	char stray[128], *nl;
	ssize_t n;

	if (poll(&pfd, 1, 0) <= 0)
		return false;
	while ((n = read(w->p.out, stray, sizeof(stray))) == -1 &&
	    errno == EINTR)
		;
	if (n == -1 && errno == EAGAIN)
		return false;
	if (n > 0) {
		if ((nl = memchr(stray, '\n', (size_t)n)) != NULL)
			n = nl - stray;
		log_warn("handler %s: worker %u is out of step: it wrote "
		    "\"%.*s\"%s after its last answer; restarting it, and "
		    "that is no answer to the next update (a worker writes "
		    "exactly one line per update)", pl->name, w->index,
		    (int)n, stray, nl == NULL ? "..." : "");
	} else {
		log_warn("handler %s: worker %u closed its stdout; restarting "
		    "it", pl->name, w->index);
	}
	return true;
}

static int
worker_run(void *arg, const struct handler_input *in, json_t *calls,
    char *msg, size_t msglen)
{
	struct pool *pl = arg;
	uint64_t deadline = now_ms() + pl->timeout_ms;
	struct buf line = { 0 }, env = { 0 };
	char *flat = NULL;
	const char *body = in->body;
	size_t len = in->len;
	char why[256];
	struct wproc *w;
	json_t *st = NULL;
	int rc = -1, want = -1;
	bool kill_it = false;

	/* One line per update: a valid JSON text has raw newlines only
	 * between tokens, where a space does as well. */
	if (memchr(in->body, '\n', in->len) != NULL ||
	    memchr(in->body, '\r', in->len) != NULL) {
		flat = xstrndup(in->body, in->len);
		for (char *p = flat; *p != '\0'; p++)
			if (*p == '\n' || *p == '\r')
				*p = ' ';
		body = flat;
	}
	if (pl->state_io) {
		json_t *s = in->state != NULL ? state_to_json(in->state) : NULL;
		char *text = s != NULL ? json_dumps(s, JSON_COMPACT) : NULL;

		buf_puts(&env, "{\"update\":");
		buf_append(&env, body, len);
		buf_printf(&env, ",\"state\":%s}", text != NULL ? text :
		    "null");
		free(text);
		json_decref(s);
		body = env.data;
		len = env.len;
	}
	if (pl->by_chat && in->u->has_chat)
		want = (int)((uint64_t)in->u->chat_id % pl->n);
	for (;;) {
		pthread_mutex_lock(&pl->mu);
		w = take(pl, want, deadline);
		pthread_mutex_unlock(&pl->mu);
		if (w == NULL || !out_of_step(pl, w))
			break;
		release(pl, w, true);	/* and wait for it, or another */
	}
	if (w == NULL) {
		if (want != -1)
			errf(msg, msglen, "worker %d (this chat's) not free "
			    "within %ums (busy or restarting)", want,
			    pl->timeout_ms);
		else
			errf(msg, msglen, "no worker free within %ums (all %u "
			    "busy or restarting)", pl->timeout_ms, pl->n);
		free(flat);
		buf_free(&env);
		return -1;
	}
	if ((rc = send_line(w->p.in, body, len, deadline, why,
	    sizeof(why))) == 0 && (rc = read_line(w->p.out, &line, deadline,
	    why, sizeof(why))) == 0) {
		rc = calls_parse_line(line.data != NULL ? line.data : "",
		    line.len, calls, pl->state_io ? &st : NULL, msg, msglen);
		if (rc == 0 && st != NULL && state_from_json(st, in->state,
		    why, sizeof(why)) == -1) {
			errf(msg, msglen, "bad answer: %s", why);
			json_array_clear(calls);
			rc = -1;
		}
	} else {
		kill_it = true;
		if (rc == -2)
			errf(msg, msglen, "worker %u timed out after %ums "
			    "(timeout = %ums): killed and restarted", w->index,
			    pl->timeout_ms, pl->timeout_ms);
		else
			errf(msg, msglen, "worker %u %s: killed and "
			    "restarted", w->index, why);
		rc = -1;
	}

	release(pl, w, kill_it);
	json_decref(st);
	buf_free(&line);
	buf_free(&env);
	free(flat);
	return rc;
}

const struct handler_kind handler_worker = {
	.name = "worker",
	.keys = worker_keys,
	.blocking = true,
	.create = worker_create,
	.start = worker_start,
	.run = worker_run,
	.destroy = worker_destroy,
};
