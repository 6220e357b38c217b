/*
 * handlers/exec.c: one process per update.
 *
 * Protocol (README "Exec handlers"): the Update on stdin; TGW_UPDATE_ID,
 * TGW_UPDATE_TYPE, TGW_CHAT_ID, TGW_COMMAND, TGW_ARGS and TGW_HANDLER in a
 * small environment (never the token); Bot API calls as JSON objects on
 * stdout.  With state_io = on, the conversation's state in TGW_STATE and
 * TGW_STATE_DATA, and one {"state": ...} object on stdout sets a new one.
 * No shell: argv comes from the config parser.  The child leads
 * its own process group so that a timeout, or the end of the run, kills
 * everything it started.  stdout is capped (over the cap is a failure),
 * stderr is capped (the rest is dropped and said so) and logged with the
 * update id.  posix_spawn with closefrom keeps our descriptors (listening
 * socket, store, TLS keys) out of the child.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "calls.h"
#include "handler.h"
#include "log.h"
#include "proc.h"
#include "state.h"
#include "update.h"
#include "util.h"

#define EXEC_STDOUT_MAX (1 << 20)
#define EXEC_STDERR_MAX (16 << 10)
#define EXEC_DEFAULT_TIMEOUT_MS 5000

struct exec {
	char *name;
	char **argv;
	unsigned timeout_ms;
	bool state_io;		/* state_io = on */
};

static const char *const exec_keys[] = { "timeout", "state_io", NULL };

static void
exec_destroy(void *arg)
{
	struct exec *e = arg;

	if (e == NULL)
		return;
	free(e->name);
	strlist_free(e->argv);
	free(e);
}

static void *
exec_create(const struct conf_handler *h, const struct config *c,
    struct diag *d)
{
	struct exec *e = xcalloc(1, sizeof(*e));
	int io = handler_conf_state_io(h, c, d);

	e->name = xstrdup(h->name);
	e->timeout_ms = EXEC_DEFAULT_TIMEOUT_MS;
	e->argv = proc_argv(h, c, "exec", d);
	e->state_io = io == 1;
	if (proc_timeout(h, c, &e->timeout_ms, d) == -1 || e->argv == NULL ||
	    io == -1) {
		exec_destroy(e);
		return NULL;
	}
	return e;
}

/* The child's environment: only what the protocol promises.  With
 * state_io, the state too: in the environment rather than on stdin, so
 * that stdin stays the Update as Telegram sent it (a program opting in
 * parses what it parsed before, and a shell script reads $TGW_STATE
 * without a JSON parser).  The data is at most STATE_DATA_MAX bytes, well
 * under the kernel's limit for one string (128 KiB). */
static char **
exec_env(const struct exec *e, const struct handler_input *in)
{
	const struct update *u = in->u;
	char **env = xcalloc(12, sizeof(*env));
	size_t n = 0;

	env[n++] = xstrdup("PATH=/usr/local/bin:/usr/bin:/bin");
	env[n++] = xstrdup("LANG=C.UTF-8");
	env[n++] = xasprintf("TGW_HANDLER=%s", e->name);
	env[n++] = xasprintf("TGW_UPDATE_ID=%" PRId64, u->id);
	env[n++] = xasprintf("TGW_UPDATE_TYPE=%s", u->type);
	env[n++] = u->has_chat ? xasprintf("TGW_CHAT_ID=%" PRId64, u->chat_id) :
	    xstrdup("TGW_CHAT_ID=");
	env[n++] = xasprintf("TGW_COMMAND=%s", u->command ? u->command : "");
	/* An environment string ends at NUL; cap the arguments so that a
	 * huge message cannot hit E2BIG. */
	env[n++] = xasprintf("TGW_ARGS=%.8192s", u->args ? u->args : "");
	if (e->state_io && in->state != NULL) {
		char *data = json_dumps(in->state->data, JSON_COMPACT);

		env[n++] = xasprintf("TGW_STATE=%s", in->state->name != NULL ?
		    in->state->name : "");
		env[n++] = xasprintf("TGW_STATE_DATA=%s", data != NULL ? data :
		    "{}");
		free(data);
	}
	env[n] = NULL;
	return env;
}

/* Reads what fd has into b, keeping at most max bytes.  Returns 0 at EOF,
 * 1 if more may come; *over is set when bytes were dropped. */
static int
drain(int fd, struct buf *b, size_t max, bool *over)
{
	char chunk[16384];
	ssize_t n;

	for (;;) {
		n = read(fd, chunk, sizeof(chunk));
		if (n > 0) {
			size_t keep = (size_t)n;

			if (b->len + keep > max) {
				keep = max > b->len ? max - b->len : 0;
				*over = true;
			}
			buf_append(b, chunk, keep);
			continue;
		}
		if (n == 0)
			return 0;
		if (errno == EINTR)
			continue;
		return errno == EAGAIN ? 1 : 0;
	}
}

static void
log_stderr(const struct exec *e, const struct update *u, struct buf *b,
    bool over)
{
	char *line, *save = NULL;

	if (b->len == 0)
		return;
	for (line = strtok_r(b->data, "\n", &save); line != NULL;
	    line = strtok_r(NULL, "\n", &save))
		log_warn("update %" PRId64 ": handler %s: stderr: %s", u->id,
		    e->name, line);
	if (over)
		log_warn("update %" PRId64 ": handler %s: stderr over %d bytes, "
		    "the rest was dropped", u->id, e->name, EXEC_STDERR_MAX);
}

static int
exec_run(void *arg, const struct handler_input *in, json_t *calls, char *msg,
    size_t msglen)
{
	struct exec *e = arg;
	struct proc p = { -1, -1, -1, -1 };
	struct buf out = { 0 }, errb = { 0 };
	bool out_over = false, err_over = false, timed_out = false;
	size_t written = 0;
	char **env = exec_env(e, in), how[128];
	uint64_t deadline = now_ms() + e->timeout_ms;
	int status = 0, rc = -1;

	if (proc_spawn(e->argv, env, &p, msg, msglen) == -1)
		goto out;
	if (in->len == 0)
		proc_close(&p.in);

	while (p.out != -1 || p.err != -1) {
		struct pollfd pfd[3];
		nfds_t n = 0;
		uint64_t now = now_ms();

		if (now >= deadline) {
			timed_out = true;
			break;
		}
		if (p.in != -1)
			pfd[n++] = (struct pollfd){ p.in, POLLOUT, 0 };
		if (p.out != -1)
			pfd[n++] = (struct pollfd){ p.out, POLLIN, 0 };
		if (p.err != -1)
			pfd[n++] = (struct pollfd){ p.err, POLLIN, 0 };
		if (poll(pfd, n, (int)(deadline - now)) == -1 && errno != EINTR) {
			errf(msg, msglen, "poll: %s", strerror(errno));
			goto kill;
		}
		for (nfds_t i = 0; i < n; i++) {
			if (pfd[i].revents == 0)
				continue;
			if (pfd[i].fd == p.in) {
				ssize_t w = write(p.in, in->body + written,
				    in->len - written);

				if (w > 0)
					written += (size_t)w;
				/* EPIPE: the handler does not read stdin;
				 * that is its choice. */
				if ((w == -1 && errno != EAGAIN &&
				    errno != EINTR) || written == in->len)
					proc_close(&p.in);
			} else if (pfd[i].fd == p.out) {
				if (drain(p.out, &out, EXEC_STDOUT_MAX,
				    &out_over) == 0)
					proc_close(&p.out);
				if (out_over) {
					errf(msg, msglen, "printed more than "
					    "%d bytes on stdout",
					    EXEC_STDOUT_MAX);
					goto kill;
				}
			} else if (pfd[i].fd == p.err) {
				if (drain(p.err, &errb, EXEC_STDERR_MAX,
				    &err_over) == 0)
					proc_close(&p.err);
			}
		}
	}
	proc_close(&p.in);
	/* Both pipes are closed: wait for the exit, within the timeout. */
	while (!timed_out) {
		pid_t r = waitpid(p.pid, &status, WNOHANG);

		if (r == p.pid)
			break;
		if (r == -1 && errno != EINTR) {
			errf(msg, msglen, "waitpid: %s", strerror(errno));
			goto kill;
		}
		if (now_ms() >= deadline)
			timed_out = true;
		else
			usleep(2000);
	}
	if (timed_out) {
		errf(msg, msglen, "timed out after %ums (timeout = %ums): "
		    "killed", e->timeout_ms, e->timeout_ms);
		goto kill;
	}
	/* Reaped: what it left running in its group still goes below. */
	kill(-p.pid, SIGKILL);
	p.pid = -1;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		proc_status(status, how, sizeof(how));
		errf(msg, msglen, "%s", how);
		goto kill;
	}
	{
		char perr_msg[256];
		json_t *st = NULL;
		json_t *got = calls_parse_stream(out.data ? out.data : "",
		    out.len, e->state_io ? &st : NULL, perr_msg,
		    sizeof(perr_msg));

		if (got != NULL && st != NULL && state_from_json(st, in->state,
		    perr_msg, sizeof(perr_msg)) == -1) {
			json_decref(got);
			got = NULL;
		}
		json_decref(st);
		if (got == NULL) {
			errf(msg, msglen, "bad output on stdout: %s", perr_msg);
			goto kill;
		}
		json_array_extend(calls, got);
		json_decref(got);
	}
	rc = 0;
kill:
	/* Whatever the handler left running in its group ends with it. */
	proc_kill(&p);
out:
	log_stderr(e, in->u, &errb, err_over);
	buf_free(&out);
	buf_free(&errb);
	strlist_free(env);
	return rc;
}

const struct handler_kind handler_exec = {
	.name = "exec",
	.keys = exec_keys,
	.blocking = true,
	.create = exec_create,
	.run = exec_run,
	.destroy = exec_destroy,
};
