/* Unit tests for the plugin and worker kinds (handlers/plugin.c,
 * handlers/worker.c, handlers/proc.c), driven through the handler table
 * as the runner drives them.  The plugin is the example echo.so of the
 * build under test ($BUILD); workers are small sh programs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "dispatch.h"
#include "handlers/plugin.h"
#include "handlers/proc.h"
#include "update.h"
#include "util.h"

#include "handler_conf.h"

static struct dispatch *
table(const char *handlers, struct config **c, struct diag *d)
{
	struct dispatch *t;

	*c = handler_conf_load(handlers, d);
	assert_non_null(*c);
	t = dispatch_new(*c, d);
	unlink(handler_conf_path);
	return t;
}

/* Runs the first handler on a message with text in chat; the calls as
 * compact JSON ("FAIL: why" when it failed). */
static char *
run(struct dispatch *t, const char *text, long chat)
{
	char json[512], err[512] = "";
	struct update *u;
	struct handler_input in;
	const struct handler *h;
	json_t *calls = json_array();
	char *out;

	snprintf(json, sizeof(json), "{\"update_id\":5,\"message\":"
	    "{\"message_id\":9,\"chat\":{\"id\":%ld},\"text\":\"%s\"}}", chat,
	    text);
	u = update_parse(json, strlen(json), NULL, 0);
	assert_non_null(u);
	h = dispatch_match(t, u, NULL);
	assert_non_null(h);
	in = (struct handler_input){ u, json, strlen(json), NULL };
	if (dispatch_run(h, &in, calls, err, sizeof(err)) == -1)
		out = xasprintf("FAIL: %s", err);
	else
		out = json_dumps(calls, JSON_COMPACT);
	json_decref(calls);
	update_free(u);
	return out;
}

static char *
plugin(const char *name)
{
	const char *b = getenv("BUILD");
	char *rel = xasprintf("%s/plugins/%s.so", b ? b : "build", name);
	char *abs = realpath(rel, NULL);

	if (abs == NULL)
		fail_msg("%s: not built", rel);
	free(rel);
	return abs;
}

static void
test_plugin_echo(void **state)
{
	struct diag d = { 0 };
	struct config *c;
	char conf[512], *so = plugin("echo"), *got;
	struct dispatch *t;

	(void)state;
	snprintf(conf, sizeof(conf), "[handler.e]\nplugin = %s\nprefix = >\n",
	    so);
	t = table(conf, &c, &d);
	assert_non_null(t);
	dispatch_start(t);
	got = run(t, "hello", 42);
	assert_string_equal(got, "[{\"chat_id\":42,\"text\":\"> hello\","
	    "\"method\":\"sendMessage\"}]");
	free(got);
	dispatch_free(t);
	config_free(c);
	diag_free(&d);
	free(so);
}

static void
test_plugin_errors(void **state)
{
	struct diag d = { 0 };
	struct config *c;
	char conf[512], *so = plugin("echo");

	(void)state;
	snprintf(conf, sizeof(conf), "[handler.e]\nplugin = %s\ncommands = x\n"
	    "colour = red\n", so);
	assert_null(table(conf, &c, &d));
	assert_non_null(strstr(d.text, ":8: colour: unknown option"));
	config_free(c);
	diag_free(&d);
	memset(&d, 0, sizeof(d));
	assert_null(table("[handler.e]\nplugin = /etc/passwd\n", &c, &d));
	assert_non_null(strstr(d.text, ":6: plugin: cannot load: "));
	config_free(c);
	diag_free(&d);
	free(so);
}

/* Issue 11, item 2: with euid 0 a plugin is checked (owner, modes, ELF)
 * and not loaded: none of its code runs as root. */
static void
test_plugin_as_root_checked_not_loaded(void **state)
{
	struct diag d = { 0 };
	struct config *c;
	char conf[512], *so = plugin("echo"), *got;
	struct dispatch *t;

	(void)state;
	if (geteuid() != 0) {
		free(so);
		skip();
	}
	snprintf(conf, sizeof(conf), "[handler.e]\nplugin = %s\nprefix = >\n",
	    so);
	t = table(conf, &c, &d);
	assert_non_null(t);
	assert_int_equal(d.count, 0);
	assert_null(dlopen(so, RTLD_LAZY | RTLD_NOLOAD));	/* not mapped */
	got = run(t, "hello", 42);
	assert_non_null(strstr(got, "FAIL: plugin "));
	assert_non_null(strstr(got, "was checked, not loaded"));
	free(got);
	dispatch_free(t);
	config_free(c);
	assert_null(table("[handler.e]\nplugin = /etc/passwd\n", &c, &d));
	assert_non_null(strstr(d.text, ":6: plugin: /etc/passwd: not an ELF "
	    "shared object"));
	config_free(c);
	diag_free(&d);
	free(so);
}

/* Issue 11, items 2 and 13: plugin files and exec or worker programs that
 * another user could change are refused: one rule for all three. */
static void
test_code_owned_by_others_refused(void **state)
{
	struct diag d = { 0 };
	struct config *c;
	char dir[] = "/tmp/tgw-handlers-test-XXXXXX", cmd[512], conf[512];
	char *so = plugin("echo");

	(void)state;
	if (geteuid() != 0) {
		free(so);
		skip();		/* needs chown */
	}
	assert_non_null(mkdtemp(dir));
	snprintf(cmd, sizeof(cmd), "cp %s %s/p.so && chown 12345:12345 %s/p.so "
	    "&& chmod 0755 %s/p.so && printf '#!/bin/sh\\n' >%s/prog && "
	    "chown 12345 %s/prog && chmod 0777 %s/prog", so, dir, dir, dir,
	    dir, dir, dir);
	assert_int_equal(system(cmd), 0);
	snprintf(conf, sizeof(conf), "[handler.p]\nplugin = %s/p.so\n"
	    "[handler.e]\nexec = %s/prog\n[handler.w]\nworker = %s/prog\n",
	    dir, dir, dir);
	assert_null(table(conf, &c, &d));
	assert_int_equal(d.count, 3);
	snprintf(cmd, sizeof(cmd), ":6: plugin: %s/p.so: owned by uid 12345, "
	    "not by root or the daemon's user (uid 0)", dir);
	assert_non_null(strstr(d.text, cmd));
	snprintf(cmd, sizeof(cmd), ":8: exec: %s/prog: owned by uid 12345",
	    dir);
	assert_non_null(strstr(d.text, cmd));
	snprintf(cmd, sizeof(cmd), ":10: worker: %s/prog: owned by uid 12345",
	    dir);
	assert_non_null(strstr(d.text, cmd));
	config_free(c);
	diag_free(&d);
	/* ours, but in a directory anyone may write */
	snprintf(cmd, sizeof(cmd), "chown 0:0 %s/prog && chmod 0755 %s/prog && "
	    "chmod 0777 %s", dir, dir, dir);
	assert_int_equal(system(cmd), 0);
	assert_null(table(conf + strlen("[handler.p]\nplugin = ") +
	    strlen(dir) + strlen("/p.so\n"), &c, &d));
	assert_non_null(strstr(d.text, ": exec: "));
	assert_non_null(strstr(d.text, "its directory"));
	config_free(c);
	diag_free(&d);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
	free(so);
}

static void
test_worker_answers_and_keeps_affinity(void **state)
{
	struct diag d = { 0 };
	struct config *c;
	struct dispatch *t;
	char *a, *b, *a2;

	(void)state;
	t = table("[handler.w]\nworker = /bin/sh -c \"while read l; do "
	    "echo '[{\\\"method\\\":\\\"sendMessage\\\",\\\"chat_id\\\":'$$'}]'; "
	    "done\"\nworkers = 2\n", &c, &d);
	if (t == NULL)
		fail_msg("%s", d.text);
	dispatch_start(t);
	a = run(t, "x", 2);	/* chat 2 -> worker 0 */
	b = run(t, "x", 3);	/* chat 3 -> worker 1 */
	a2 = run(t, "x", 4);	/* chat 4 -> worker 0 again */
	assert_non_null(strstr(a, "\"method\":\"sendMessage\""));
	assert_string_equal(a, a2);
	assert_string_not_equal(a, b);
	free(a);
	free(b);
	free(a2);
	dispatch_free(t);
	config_free(c);
	diag_free(&d);
}

static void
test_worker_failures(void **state)
{
	struct diag d = { 0 };
	struct config *c;
	struct dispatch *t;
	char *got;

	(void)state;
	/* answers the first update, dies on the second (reading it first,
	 * so that the death is always seen while handling it, never as a
	 * worker already gone and restarted) */
	t = table("[handler.w]\nworker = /bin/sh -c \"read l; echo '[]'; "
	    "read l; exit 3\"\ntimeout = 300ms\n", &c, &d);
	assert_non_null(t);
	dispatch_start(t);
	got = run(t, "x", 1);
	assert_string_equal(got, "[]");
	free(got);
	got = run(t, "x", 1);
	assert_string_equal(got, "FAIL: worker 0 exited (closed its stdout) "
	    "while handling this update: killed and restarted");
	free(got);
	dispatch_free(t);
	config_free(c);
	diag_free(&d);

	memset(&d, 0, sizeof(d));
	t = table("[handler.w]\nworker = /bin/sh -c \"while read l; do sleep 5; "
	    "done\"\ntimeout = 100ms\n", &c, &d);
	assert_non_null(t);
	dispatch_start(t);
	got = run(t, "x", 1);
	assert_string_equal(got, "FAIL: worker 0 timed out after 100ms "
	    "(timeout = 100ms): killed and restarted");
	free(got);
	dispatch_free(t);
	config_free(c);
	diag_free(&d);
}

static void
test_worker_config_errors(void **state)
{
	struct diag d = { 0 };
	struct config *c;

	(void)state;
	assert_null(table("[handler.w]\nworker = /bin/cat\nworkers = 0\n"
	    "affinity = user\ntimeout = forever\n", &c, &d));

	assert_non_null(strstr(d.text, ":7: workers: '0': must be a whole "
	    "number, 1..256"));
	assert_non_null(strstr(d.text, ":8: affinity: 'user': chat"));
	assert_non_null(strstr(d.text, ":9: timeout: 'forever' is not a "
	    "duration"));
	config_free(c);
	diag_free(&d);
	memset(&d, 0, sizeof(d));
	assert_null(table("[handler.w]\nworker = /bin/cat\naffinity = user\n",
	    &c, &d));
	assert_non_null(strstr(d.text, ":7: affinity: 'user': chat"));
	config_free(c);
	diag_free(&d);
	memset(&d, 0, sizeof(d));
	assert_null(table("[handler.w]\nworker = cat\n", &c, &d));
	assert_non_null(strstr(d.text, ":6: worker: needs an absolute path"));
	config_free(c);
	diag_free(&d);
}

static void
test_proc_status(void **state)
{
	char out[128];

	(void)state;
	proc_status(3 << 8, out, sizeof(out));
	assert_string_equal(out, "exited with status 3");
	proc_status(SIGKILL, out, sizeof(out));
	assert_string_equal(out, "killed by signal 9 (Killed)");
}

int
main(void)
{
	const struct CMUnitTest as_root[] = {
		cmocka_unit_test(test_plugin_as_root_checked_not_loaded),
	};
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_code_owned_by_others_refused),
		cmocka_unit_test(test_plugin_echo),
		cmocka_unit_test(test_plugin_errors),
		cmocka_unit_test(test_worker_answers_and_keeps_affinity),
		cmocka_unit_test(test_worker_failures),
		cmocka_unit_test(test_worker_config_errors),
		cmocka_unit_test(test_proc_status),
	};

	int failed;

	signal(SIGPIPE, SIG_IGN);
	failed = cmocka_run_group_tests_name("plugins as root", as_root, NULL,
	    NULL);
	/* The rest loads plugins as the daemon does when it stays root. */
	plugin_allow_root();
	return failed + cmocka_run_group_tests(tests, NULL, NULL);
}
