/* Unit tests for the small modules every other one leans on: util.c
 * (buffers, strings, files, time), diag.c (configuration problems as
 * text) and notify.c (systemd's notification datagrams). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "diag.h"
#include "notify.h"
#include "util.h"

static void
test_buf(void **state)
{
	struct buf b = { 0 };
	char *s;

	(void)state;
	buf_puts(&b, "update ");
	buf_printf(&b, "%d: %s", 42, "ok");
	buf_append(&b, "\0x", 2);	/* bytes, NUL included */
	assert_int_equal(b.len, strlen("update 42: ok") + 2);
	assert_string_equal(b.data, "update 42: ok");
	assert_int_equal(b.data[b.len], '\0');	/* always terminated */
	/* a formatted piece larger than what was reserved */
	buf_printf(&b, "%5000s", "");
	assert_int_equal(b.len, strlen("update 42: ok") + 2 + 5000);
	s = buf_steal(&b);
	assert_null(b.data);
	assert_int_equal(b.len, 0);
	free(s);
	/* stealing from an empty buffer still gives a string */
	s = buf_steal(&b);
	assert_string_equal(s, "");
	free(s);
	buf_free(&b);
}

static void
test_strings(void **state)
{
	char padded[] = " \t value with spaces \r\n";
	char **list;
	size_t n;

	(void)state;
	assert_string_equal(str_trim(padded), "value with spaces");
	list = strlist_split(" message, edited_message\tcallback_query,,", &n);
	assert_int_equal(n, 3);
	assert_string_equal(list[0], "message");
	assert_string_equal(list[1], "edited_message");
	assert_string_equal(list[2], "callback_query");
	assert_null(list[3]);
	strlist_free(list);
	list = strlist_split("", &n);
	assert_int_equal(n, 0);
	assert_null(list[0]);
	strlist_free(list);
	assert_true(str_is_digits("8443"));
	assert_false(str_is_digits(""));
	assert_false(str_is_digits("-1"));
	assert_false(str_is_digits("12a"));
}

static void
test_errf_and_time(void **state)
{
	char err[8], date[64];
	uint64_t a, b;

	(void)state;
	errf(err, sizeof(err), "%s", "a long message");
	assert_string_equal(err, "a long ");	/* cut, terminated */
	errf(NULL, 0, "%s", "ignored");
	fmt_utc(1441645532, date, sizeof(date));
	assert_string_equal(date, "2015-09-07 17:05:32 UTC");
	a = now_ms();
	b = now_ms();
	assert_true(b >= a);
	assert_true(wall_ms() > INT64_C(1700000000000));
}

static void
test_files(void **state)
{
	char dir[] = "/tmp/tgw-util-test-XXXXXX", path[96], deep[96];
	char err[256], cmd[128], *data;
	struct stat st;
	size_t len;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/f", dir);
	assert_int_equal(file_write_atomic(path, "secret", 6, 0600, err,
	    sizeof(err)), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	data = file_read(path, 64, &len, err, sizeof(err));
	assert_non_null(data);
	assert_int_equal(len, 6);
	assert_string_equal(data, "secret");
	free(data);
	/* replaced whole, never torn; no temporary file left behind */
	assert_int_equal(file_write_atomic(path, "new", 3, 0600, err,
	    sizeof(err)), 0);
	data = file_read(path, 64, &len, err, sizeof(err));
	assert_string_equal(data, "new");
	free(data);
	snprintf(cmd, sizeof(cmd), "test $(ls %s | wc -l) -eq 1", dir);
	assert_int_equal(system(cmd), 0);
	/* a file over the bound is refused, naming it */
	assert_null(file_read(path, 2, &len, err, sizeof(err)));
	assert_non_null(strstr(err, path));
	assert_null(file_read("/nonexistent/x", 64, &len, err, sizeof(err)));
	assert_non_null(strstr(err, "/nonexistent/x"));
	/* directories with their parents */
	snprintf(deep, sizeof(deep), "%s/a/b/c", dir);
	assert_int_equal(dir_ensure(deep, 0700, err, sizeof(err)), 0);
	assert_int_equal(stat(deep, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(dir_ensure(deep, 0700, err, sizeof(err)), 0);
	assert_int_equal(dir_ensure(path, 0700, err, sizeof(err)), -1);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* Issue 11, items 8 and 17: a file planted under the temporary name of
 * the old scheme (PATH.tmp.PID) is neither written nor renamed into
 * place; a FIFO where a file belongs is refused at once, not read. */
static void
test_files_hostile(void **state)
{
	char dir[] = "/tmp/tgw-util-test-XXXXXX", path[96], planted[128];
	char err[256], buf[16], cmd[128];
	struct stat st;
	int fd;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/webhook.key", dir);
	snprintf(planted, sizeof(planted), "%s.tmp.%ld", path, (long)getpid());
	fd = open(planted, O_RDWR | O_CREAT | O_EXCL, 0666);
	assert_int_not_equal(fd, -1);
	assert_int_equal(file_write_atomic(path, "PRIVATE", 7, 0600, err,
	    sizeof(err)), 0);
	/* the planter's file got nothing and is not the key */
	assert_int_equal(pread(fd, buf, sizeof(buf), 0), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	{
		struct stat pst;

		assert_int_equal(fstat(fd, &pst), 0);
		assert_int_not_equal(pst.st_ino, st.st_ino);
	}
	close(fd);
	/* a FIFO as a file: refused without blocking */
	snprintf(planted, sizeof(planted), "%s/fifo", dir);
	assert_int_equal(mkfifo(planted, 0600), 0);
	assert_null(file_read(planted, 64, NULL, err, sizeof(err)));
	assert_non_null(strstr(err, "not a regular file"));
	assert_null(file_read(dir, 64, NULL, err, sizeof(err)));
	assert_non_null(strstr(err, "is a directory"));
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* Issue 11, items 2, 8 and 13: the ownership and mode rules. */
static void
test_file_checks(void **state)
{
	char dir[] = "/tmp/tgw-util-test-XXXXXX", prog[96], lnk[96];
	char err[512], cmd[128];
	uid_t me = geteuid();

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(prog, sizeof(prog), "%s/prog", dir);
	assert_int_equal(file_write_atomic(prog, "#!/bin/sh\n", 10, 0755, err,
	    sizeof(err)), 0);
	assert_int_equal(file_check_trusted(prog, -1, me, err, sizeof(err)), 0);
	assert_int_equal(chmod(prog, 0775), 0);
	assert_int_equal(file_check_trusted(prog, -1, me, err, sizeof(err)),
	    -1);
	assert_non_null(strstr(err, "writable by group or others (mode 0775)"));
	assert_int_equal(chmod(prog, 0755), 0);
	if (me == 0) {
		/* another user's file: refused, unless that is our user */
		assert_int_equal(chown(prog, 12345, 12345), 0);
		assert_int_equal(file_check_trusted(prog, -1, 0, err,
		    sizeof(err)), -1);
		assert_non_null(strstr(err, "owned by uid 12345"));
		assert_int_equal(file_check_trusted(prog, -1, 12345, err,
		    sizeof(err)), 0);
		assert_int_equal(chown(prog, 0, 0), 0);
	}
	/* a directory others may write */
	assert_int_equal(chmod(dir, 0777), 0);
	assert_int_equal(file_check_trusted(prog, -1, me, err, sizeof(err)),
	    -1);
	assert_non_null(strstr(err, "its directory"));
	/* sticky, like /tmp: its names are replaced only by their owner */
	assert_int_equal(chmod(dir, 01777), 0);
	assert_int_equal(file_check_trusted(prog, -1, me, err, sizeof(err)), 0);
	assert_int_equal(chmod(dir, 0700), 0);

	/* private files: the token's rule */
	assert_int_equal(file_check_private(prog, true, me, err, sizeof(err)),
	    -1);
	assert_non_null(strstr(err, "mode 0755"));
	assert_int_equal(chmod(prog, 0640), 0);
	assert_int_equal(file_check_private(prog, true, me, err, sizeof(err)),
	    0);
	assert_int_equal(chmod(prog, 0620), 0);
	assert_int_equal(file_check_private(prog, true, me, err, sizeof(err)),
	    -1);
	assert_int_equal(file_check_private(dir, true, me, err, sizeof(err)),
	    0);
	assert_int_equal(chmod(dir, 0770), 0);
	assert_int_equal(file_check_private(dir, true, me, err, sizeof(err)),
	    -1);
	assert_non_null(strstr(err, "chmod go-w"));
	assert_int_equal(chmod(dir, 0700), 0);
	snprintf(lnk, sizeof(lnk), "%s/link", dir);
	assert_int_equal(symlink(prog, lnk), 0);
	assert_int_equal(file_check_private(lnk, false, me, err, sizeof(err)),
	    -1);
	assert_non_null(strstr(err, "symbolic link"));
	unlink(lnk);
	assert_int_equal(link(prog, lnk), 0);	/* a second name */
	assert_int_equal(file_check_private(lnk, false, me, err, sizeof(err)),
	    -1);
	assert_non_null(strstr(err, "has 2 names (hard links)"));
	snprintf(lnk, sizeof(lnk), "%s/missing", dir);
	assert_int_equal(file_check_private(lnk, false, me, err, sizeof(err)),
	    1);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

static void
test_diag(void **state)
{
	struct diag d = { 0 };

	(void)state;
	diag_add(&d, "/etc/tgwebhookd.conf", 12, "port", "must be one of %s",
	    "443, 80, 88, 8443");
	diag_add(&d, "/etc/tgwebhookd.conf", 0, NULL, "cannot read: %s",
	    "No such file or directory");
	assert_int_equal(d.count, 2);
	assert_string_equal(d.text,
	    "/etc/tgwebhookd.conf:12: port: must be one of 443, 80, 88, 8443\n"
	    "/etc/tgwebhookd.conf: cannot read: No such file or directory\n");
	diag_free(&d);
	assert_null(d.text);
	assert_int_equal(d.count, 0);
}

static void
test_notify(void **state)
{
	char path[] = "/tmp/tgw-notify-XXXXXX", sock[128], got[256];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char pid[32];
	ssize_t n;
	int fd;

	(void)state;
	unsetenv("NOTIFY_SOCKET");
	assert_int_equal(notify_send("READY=1"), -1);	/* not under systemd */
	assert_non_null(mkdtemp(path));
	snprintf(sock, sizeof(sock), "%s/notify", path);
	strcpy(sa.sun_path, sock);
	fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	setenv("NOTIFY_SOCKET", sock, 1);
	assert_int_equal(notify_send("READY=1\nSTATUS=%s", "serving"), 0);
	n = recv(fd, got, sizeof(got) - 1, 0);
	assert_true(n > 0);
	got[n] = '\0';
	assert_string_equal(got, "READY=1\nSTATUS=serving");
	setenv("NOTIFY_SOCKET", "relative/path", 1);
	assert_int_equal(notify_send("READY=1"), -1);
	unsetenv("NOTIFY_SOCKET");
	close(fd);
	unlink(sock);
	rmdir(path);

	/* the watchdog: for this process only */
	unsetenv("WATCHDOG_USEC");
	assert_int_equal(notify_watchdog_ms(), 0);
	setenv("WATCHDOG_USEC", "30000000", 1);
	unsetenv("WATCHDOG_PID");
	assert_int_equal(notify_watchdog_ms(), 30000);
	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	setenv("WATCHDOG_PID", pid, 1);
	assert_int_equal(notify_watchdog_ms(), 30000);
	setenv("WATCHDOG_PID", "1", 1);
	assert_int_equal(notify_watchdog_ms(), 0);
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_buf),
		cmocka_unit_test(test_strings),
		cmocka_unit_test(test_errf_and_time),
		cmocka_unit_test(test_files),
		cmocka_unit_test(test_files_hostile),
		cmocka_unit_test(test_file_checks),
		cmocka_unit_test(test_diag),
		cmocka_unit_test(test_notify),
	};

	return cmocka_run_group_tests_name("util", tests, NULL, NULL);
}
