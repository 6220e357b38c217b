/*
 * diag.h: a list of problems found while checking the configuration, each
 * formatted "FILE:LINE: key: what is wrong" (or "FILE: key: ..." when no
 * line applies), so that -t can print them all before failing.
 */
#ifndef TGW_DIAG_H
#define TGW_DIAG_H

#include <stddef.h>

struct diag {
	char *text;		/* every problem, one per line */
	size_t len;
	size_t cap;
	int count;
};

void diag_add(struct diag *d, const char *file, int line, const char *key,
    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void diag_free(struct diag *d);

#endif
