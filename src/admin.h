/*
 * admin.h: the admin listener (plain HTTP, loopback by default):
 * GET /healthz and GET /metrics.  What it reports comes from a callback,
 * so this module knows nothing of the rest of the daemon.
 */
#ifndef TGW_ADMIN_H
#define TGW_ADMIN_H

#include <stdbool.h>
#include <stddef.h>

#include "metrics.h"

/* Fills g; returns true when healthy (serving and registered). */
typedef bool admin_probe(void *arg, struct metrics_gauges *g);

struct admin;

/* Listens on "ADDR:PORT".  NULL with err on failure. */
struct admin *admin_start(const char *listen, admin_probe *probe, void *arg,
    char *err, size_t errlen);
void admin_stop(struct admin *a);

#endif
