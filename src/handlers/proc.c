/*
 * handlers/proc.c: starting handler programs (see proc.h).
 */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "handler.h"
#include "util.h"

char **
proc_argv(const struct conf_handler *h, const struct config *c,
    const char *key, struct diag *d)
{
	const char *cmd;
	char **argv, err[1024];
	int line;

	cmd = handler_conf_get(h, key, &line);
	if ((argv = config_split_argv(cmd, err, sizeof(err))) == NULL) {
		diag_add(d, c->file, line, key, "%s", err);
		return NULL;
	}
	if (argv[0] == NULL || argv[0][0] != '/') {
		diag_add(d, c->file, line, key, "needs an absolute path to the "
		    "program (no shell, no $PATH search)");
		strlist_free(argv);
		return NULL;
	}
	if (access(argv[0], X_OK) == -1) {
		diag_add(d, c->file, line, key, "%s: %s", argv[0],
		    strerror(errno));
		strlist_free(argv);
		return NULL;
	}
	/* The rule for plugin files: whoever can change the program runs
	 * code as the daemon. */
	if (file_check_trusted(argv[0], -1, config_user_uid(c), err,
	    sizeof(err)) == -1) {
		diag_add(d, c->file, line, key, "%s", err);
		strlist_free(argv);
		return NULL;
	}
	return argv;
}

int
proc_timeout(const struct conf_handler *h, const struct config *c,
    unsigned *ms, struct diag *d)
{
	const char *v;
	char err[256] = "";
	int line;

	if ((v = handler_conf_get(h, "timeout", &line)) == NULL)
		return 0;
	if (config_parse_duration(v, ms, err, sizeof(err)) == -1 ||
	    *ms < 10 || *ms > 3600000) {
		diag_add(d, c->file, line, "timeout", "%s",
		    err[0] ? err : "must be 10ms..1h");
		return -1;
	}
	return 0;
}

void
proc_close(int *fd)
{
	if (*fd != -1) {
		close(*fd);
		*fd = -1;
	}
}

int
proc_spawn(char *const argv[], char *const env[], struct proc *p, char *err,
    size_t errlen)
{
	int pin[2] = { -1, -1 }, pout[2] = { -1, -1 }, perr[2] = { -1, -1 };
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none, dflt;
	int rc;

	*p = (struct proc){ -1, -1, -1, -1 };
	if (pipe2(pin, O_CLOEXEC) == -1 || pipe2(pout, O_CLOEXEC) == -1 ||
	    pipe2(perr, O_CLOEXEC) == -1) {
		errf(err, errlen, "pipe: %s", strerror(errno));
		rc = -1;
		goto out;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pin[0], 0);
	posix_spawn_file_actions_adddup2(&fa, pout[1], 1);
	posix_spawn_file_actions_adddup2(&fa, perr[1], 2);
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);
	posix_spawnattr_init(&at);
	sigemptyset(&none);
	sigemptyset(&dflt);
	sigaddset(&dflt, SIGPIPE);
	sigaddset(&dflt, SIGTERM);
	sigaddset(&dflt, SIGINT);
	sigaddset(&dflt, SIGHUP);
	sigaddset(&dflt, SIGCHLD);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &dflt);
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP |
	    POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	rc = posix_spawn(&p->pid, argv[0], &fa, &at, argv, env);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	if (rc != 0) {
		errf(err, errlen, "cannot start %s: %s", argv[0], strerror(rc));
		p->pid = -1;
		rc = -1;
		goto out;
	}
	p->in = pin[1];
	p->out = pout[0];
	p->err = perr[0];
	pin[1] = pout[0] = perr[0] = -1;
	fcntl(p->in, F_SETFL, O_NONBLOCK);
	fcntl(p->out, F_SETFL, O_NONBLOCK);
	fcntl(p->err, F_SETFL, O_NONBLOCK);
out:
	for (int i = 0; i < 2; i++) {
		proc_close(&pin[i]);
		proc_close(&pout[i]);
		proc_close(&perr[i]);
	}
	return rc;
}

int
proc_kill(struct proc *p)
{
	int status = -1;

	if (p->pid > 0) {
		kill(-p->pid, SIGKILL);
		while (waitpid(p->pid, &status, 0) == -1 && errno == EINTR)
			;
		p->pid = -1;
	}
	proc_close(&p->in);
	proc_close(&p->out);
	proc_close(&p->err);
	return status;
}

void
proc_status(int status, char *out, size_t len)
{
	if (WIFSIGNALED(status))
		snprintf(out, len, "killed by signal %d (%s)", WTERMSIG(status),
		    strsignal(WTERMSIG(status)));
	else
		snprintf(out, len, "exited with status %d",
		    WEXITSTATUS(status));
}
