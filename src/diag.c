/*
 * diag.c: accumulates configuration problems as text.
 */
#include "diag.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void
diag_add(struct diag *d, const char *file, int line, const char *key,
    const char *fmt, ...)
{
	struct buf b = { d->text, d->len, d->cap };
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (line > 0)
		buf_printf(&b, "%s:%d: ", file, line);
	else
		buf_printf(&b, "%s: ", file);
	if (key != NULL)
		buf_printf(&b, "%s: ", key);
	buf_printf(&b, "%s\n", msg);
	d->text = b.data;
	d->len = b.len;
	d->cap = b.cap;
	d->count++;
}

void
diag_free(struct diag *d)
{
	free(d->text);
	memset(d, 0, sizeof(*d));
}
