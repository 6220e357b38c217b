/* handler_conf.h: for unit tests of handler kinds: a configuration made of
 * a fixed [bot] and [webhook] head (4 lines, so handler sections start at
 * line 5) and the given handler sections, written to a temporary file
 * (its name in handler_conf_path, for FILE:LINE messages; unlink it when
 * done).  Include after cmocka.h. */
#ifndef TGW_TEST_HANDLER_CONF_H
#define TGW_TEST_HANDLER_CONF_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "util.h"

static char handler_conf_path[64];

static struct config *
handler_conf_load(const char *handlers, struct diag *d)
{
	char text[4096], err[128];
	int fd;

	snprintf(text, sizeof(text), "[bot]\ntoken = 1:AAAAAAAAAAAAAAAAAAAAAAAA\n"
	    "[webhook]\ndomain = x.example\n%s", handlers);
	strcpy(handler_conf_path, "/tmp/tgw-handler-test-XXXXXX");
	fd = mkstemp(handler_conf_path);
	assert_true(fd != -1);
	close(fd);
	assert_int_equal(file_write_atomic(handler_conf_path, text,
	    strlen(text), 0600, err, sizeof(err)), 0);
	return config_load(handler_conf_path, d);
}

#endif
