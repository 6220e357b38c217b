/*
 * daemon.h: the running daemon.  Its start-up chain, in dependency order:
 * handlers -> store (secrets) -> certificate -> gate -> outbox -> runner
 * -> server -> registration; teardown in reverse.  Signals are blocked in
 * every thread and taken by the main loop with sigtimedwait: no code runs
 * in signal context.  SIGHUP reloads, SIGTERM and SIGINT stop.
 */
#ifndef TGW_DAEMON_H
#define TGW_DAEMON_H

#include "cert.h"
#include "config.h"

struct store;

/* A certificate closer to its end than this is warned about. */
#define CERT_WARN_DAYS 30

/*
 * Checks (and with make = true, creates) the configured certificate.
 * Problems go to d.  Returns 0 and fills info, -1 on a problem, 1 when
 * the pair is missing and would be generated at start (make = false).
 */
int daemon_certificate(const struct config *c, bool make,
    struct cert_info *info, struct diag *d);

/* Checks the owners and modes of what holds the daemon's secrets: the
 * store directory and its files, and the private key (util.h's
 * file_check_private, for the user config_user_uid() names).  Problems
 * go to d; returns 0 or -1. */
int daemon_check_files(const struct config *c, struct diag *d);

/* Opens the store [store] backend names, the bot's id taken from token
 * (which PostgreSQL keys rows by; SQLite needs none: token may be NULL).
 * check: as -t, changing nothing (store_options).  NULL with err naming
 * the key and what is wrong. */
struct store *daemon_store_open(const struct config *c, const char *token,
    bool check, char *err, size_t errlen);

/* Becomes [server] user for good (no supplementary groups; root cannot be
 * regained).  0, or -1 with err. */
int daemon_become_user(const struct config *c, char *err, size_t errlen);

/* Runs the daemon until it is told to stop; *c is the configuration in
 * force at the end (a reload may have replaced it).  Returns the exit
 * code. */
int daemon_run(struct config **c, const char *token);

#endif
