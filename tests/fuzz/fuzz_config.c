/* libFuzzer target: the configuration parser and handler table. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "config.h"
#include "dispatch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char path[64];
	struct diag d = { 0 };
	struct config *c;
	FILE *f;

	if (path[0] == '\0')
		snprintf(path, sizeof(path), "/tmp/tgw-fuzz-config-%ld.conf",
		    (long)getpid());
	if ((f = fopen(path, "w")) == NULL)
		return 0;
	fwrite(data, 1, size, f);
	fclose(f);
	c = config_load(path, &d);
	if (c != NULL)
		dispatch_free(dispatch_new(c, &d));
	config_free(c);
	diag_free(&d);
	return 0;
}
