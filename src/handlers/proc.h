/*
 * handlers/proc.h: what the exec and worker kinds share: checking a
 * program and a timeout from the configuration, and starting a program
 * with pipes on its stdin, stdout and stderr, in its own process group,
 * with no descriptor of ours and a signal state of its own.
 */
#ifndef TGW_PROC_H
#define TGW_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "config.h"
#include "diag.h"

/* The argv of `key` (no shell: split by config_split_argv), its program
 * an absolute path we may execute that only root or the daemon's user
 * can change (util.h's file_check_trusted, as for plugin files).  NULL
 * with the problem in d. */
char **proc_argv(const struct conf_handler *h, const struct config *c,
    const char *key, struct diag *d);
/* `timeout` of h into *ms (10ms..1h; left alone if absent).  -1 with the
 * problem in d. */
int proc_timeout(const struct conf_handler *h, const struct config *c,
    unsigned *ms, struct diag *d);

struct proc {
	pid_t pid;		/* also its process group */
	int in, out, err;	/* our ends, non-blocking and close-on-exec;
				 * -1 once closed */
};

/* Starts argv[0] with env.  0, or -1 with err. */
int proc_spawn(char *const argv[], char *const env[], struct proc *p,
    char *err, size_t errlen);
/* Closes fd if open and sets it to -1. */
void proc_close(int *fd);
/* Kills p's whole process group, reaps p and closes its pipes.  Returns
 * the wait status, or -1 if p was not running. */
int proc_kill(struct proc *p);
/* "exited with status 3", "killed by signal 9 (Killed)" */
void proc_status(int status, char *out, size_t len);

#endif
