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

/* A certificate closer to its end than this is warned about. */
#define CERT_WARN_DAYS 30

/*
 * Checks (and with make = true, creates) the configured certificate.
 * Problems go to d.  Returns 0 and fills info, -1 on a problem, 1 when
 * the pair is missing and would be generated at start (make = false).
 */
int daemon_certificate(const struct config *c, bool make,
    struct cert_info *info, struct diag *d);

/* Runs the daemon until it is told to stop; *c is the configuration in
 * force at the end (a reload may have replaced it).  Returns the exit
 * code. */
int daemon_run(struct config **c, const char *token);

#endif
