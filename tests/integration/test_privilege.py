"""Privileges, file modes and the configuration's traps (issue 11, items 1,
2, 8, 13, 14 and 17): the hand-over of the store as root, plugin code never
run as root, the owners and modes of secrets and code, the token out of
/proc's reach, FIFOs and directories where files belong.

Tests that need root (to start the daemon as root with a [server] user,
to chown) say so when skipped."""

import json
import os
import subprocess
import time

from harness import TOKEN, Daemon, binary, compile_plugin, message, skip

HANDLERS = "[handler.start]\ncommands = /start\nreply = hi\n"
NOBODY = 65534
AS_NOBODY = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY,
             "--clear-groups"]


def need_root():
    if os.geteuid() != 0:
        skip("needs root (starts the daemon as root with "
             "[server] user, chowns files)")
    return False


def run(d, *args, env=None, timeout=20):
    return subprocess.run([binary(), "-c", d.conf] + list(args),
                          capture_output=True, env=env or d.env,
                          timeout=timeout)


def test_store_hand_over_never_follows_links():
    """Item 1: root hands the store to [server] user by name, never
    through a link, never a hard link to another file."""
    if need_root():
        return
    d = Daemon(HANDLERS, extra="[server]\nuser = nobody\n", start=False)
    with d:
        os.chmod(d.dir, 0o711)      # nobody passes through to its store
        d.start()
        d.stop()
        targets = []
        for name in ("shadow-a", "shadow-b"):
            t = os.path.join(d.dir, name)
            with open(t, "w") as f:
                f.write("root's\n")
            os.chmod(t, 0o600)
            targets.append(t)
        # what a handler running as the bot's user could plant
        os.symlink(targets[0], os.path.join(d.store, "x"))
        d.start()
        assert os.stat(targets[0]).st_uid == 0, os.stat(targets[0]).st_uid
        for name in ("", "tgwebhookd.db", "webhook.key", "webhook.pem"):
            st = os.stat(os.path.join(d.store, name))
            assert st.st_uid == NOBODY, (name, st.st_uid)
        assert d.deliver(message("/start", 1))[0] == 200
        d.stop()
        # one of the daemon's own names as a link, or as a second name of
        # another file: refused before anything (SQLite as root) follows
        # or fchowns it
        for planted, link, want in (
                ("tgwebhookd.db-wal", os.symlink, b"is a symbolic link: the "
                 b"daemon's own files are regular files; remove it"),
                ("tgwebhookd.db-journal", os.link, b"has 2 names (hard "
                 b"links): the daemon's own files have one; remove it")):
            p = os.path.join(d.store, planted)
            link(targets[1], p)
            out = run(d)
            assert out.returncode == 1
            assert p.encode() + b" " + want in out.stderr, out.stderr
            assert os.stat(targets[1]).st_uid == 0
            os.unlink(p)



def test_store_path_must_be_roots_to_be_handed_over():
    """Item 1, found again by a later review: a store directory swapped
    for a link (to /etc, say) by the bot's user, who owns the directory
    above it, was followed by root, which gave the link's target away."""
    if need_root():
        return
    d = Daemon(HANDLERS, extra="[server]\nuser = nobody\n", start=False)
    with d:
        os.chmod(d.dir, 0o711)
        d.start()
        d.stop()
        fake_etc = os.path.join(d.dir, "fake-etc")
        os.mkdir(fake_etc, 0o755)
        os.rename(d.store, d.store + ".old")
        os.symlink(fake_etc, d.store)
        for args in (["-t"], []):
            out = run(d, *args)
            assert out.returncode == 1, out
            assert (d.store.encode() + b" is a symbolic link: started as "
                    b"root") in out.stderr, out.stderr
        assert os.stat(fake_etc).st_uid == 0
        assert os.listdir(fake_etc) == []
        os.unlink(d.store)
        os.rename(d.store + ".old", d.store)
        # the directory above the store is the bot user's: it could swap
        # the store between the check and the open
        os.chown(d.dir, NOBODY, NOBODY)
        for args in (["-t"], []):
            out = run(d, *args)
            assert out.returncode == 1, out
            assert (d.dir.encode() + b", above the store, is not root's")\
                in out.stderr, out.stderr
        os.chown(d.dir, 0, 0)
        out = run(d, "-t")
        assert out.returncode == 0, out

def test_weak_modes_of_store_and_key_refused():
    """Item 8: the token's rule for the store and the key, in -t and at
    start."""
    d = Daemon(HANDLERS, start=False)
    with d:
        os.makedirs(d.store)
        os.chmod(d.store, 0o777)
        for args in (["-t"], []):
            out = run(d, *args)
            assert out.returncode == 1, out
            assert (b"dir: %s has mode 0777: writable by other users; chmod "
                    b"go-w" % d.store.encode()) in out.stderr, out.stderr
        os.chmod(d.store, 0o700)
        d.start()
        d.stop()
        key = os.path.join(d.store, "webhook.key")
        assert os.stat(key).st_mode & 0o777 == 0o600
        os.chmod(key, 0o644)
        for args in (["-t"], []):
            out = run(d, *args)
            assert out.returncode == 1, out
            assert (b"private_key: %s has mode 0644: readable or writable by "
                    b"other users" % key.encode()) in out.stderr, out.stderr
        os.chmod(key, 0o600)
        db = os.path.join(d.store, "tgwebhookd.db")
        os.chmod(db, 0o604)
        out = run(d, "-t")
        assert out.returncode == 1 and b"tgwebhookd.db has mode 0604" in \
            out.stderr, out
        os.chmod(db, 0o600)
        if os.geteuid() == 0:
            os.chown(d.store, 12345, 12345)
            out = run(d, "-t")
            assert out.returncode == 1
            assert b"is owned by uid 12345, not by root or the daemon's " \
                b"user" in out.stderr, out.stderr
            os.chown(d.store, 0, 0)
        out = run(d, "-t")
        assert out.returncode == 0, out


PROBE = r"""
#include <stdio.h>
#include <unistd.h>
#include <tgwebhookd.h>

static void
mark(const char *what)
{
	FILE *f = fopen(MARKS "/marks", "a");

	if (f != NULL) {
		fprintf(f, "%s uid=%d\n", what, (int)geteuid());
		fclose(f);
	}
}

__attribute__((constructor)) static void
ctor(void)
{
	mark("constructor");
}

static int
init(void **state, const struct tgw_option *o, size_t n, char *err,
    size_t errlen)
{
	(void)state; (void)o; (void)n; (void)err; (void)errlen;
	mark("init");
	return 0;
}

static int
handle(void *s, const struct tgw_update *u, struct tgw_reply *r)
{
	(void)s; (void)u; (void)r;
	return 0;
}

TGW_PLUGIN(0, init, handle, NULL);
"""


def test_no_plugin_code_runs_as_root():
    """Item 2: -t as root, and a start as root with a bad configuration,
    run no plugin code as root; with [server] user, -t loads plugins in a
    child that is that user."""
    if need_root():
        return
    d = Daemon("", start=False)
    with d:
        os.chmod(d.dir, 0o755)
        marks = os.path.join(d.dir, "m")
        os.mkdir(marks)
        os.chmod(marks, 0o1777)
        so = compile_plugin(d, "probe", PROBE.replace(
            "MARKS", '"%s"' % marks))
        base = open(d.conf).read() + "[handler.p]\nplugin = %s\n" % so
        markfile = os.path.join(marks, "marks")

        def seen():
            if not os.path.exists(markfile):
                return ""
            return open(markfile).read()

        # -t as root, no [server] user: checked, not loaded
        open(d.conf, "w").write(base)
        out = run(d, "-t")
        assert seen() == "", seen()
        assert out.returncode == 0, out
        assert b"plugins: files checked (owner, modes, ELF), not loaded" \
            in out.stdout, out.stdout
        assert out.stdout.endswith(b"configuration OK\n")
        # a start as root with a bad configuration: nothing loaded
        open(d.conf, "w").write(base.replace("port = 8443", "port = 8080"))
        out = run(d)
        assert out.returncode == 1 and b"port: 8080" in out.stderr, out
        assert seen() == "", seen()
        # with [server] user: loaded in a child as that user, never root
        user = "[server]\nuser = nobody\n"
        open(d.conf, "w").write(base + user)
        out = run(d, "-t")
        assert out.returncode == 0, out
        assert b"handlers checked as nobody, in a child process" in \
            out.stdout, out.stdout
        assert seen() == "constructor uid=%d\ninit uid=%d\n" % (
            NOBODY, NOBODY), seen()
        open(d.conf, "w").write(base.replace("port = 8443", "port = 8080")
                                + user)
        out = run(d)
        assert out.returncode == 1 and b"port: 8080" in out.stderr, out
        assert "uid=0" not in seen(), seen()
        # the start: loaded after the drop
        os.unlink(markfile)
        open(d.conf, "w").write(base + user)
        d.start()
        assert seen() == "constructor uid=%d\ninit uid=%d\n" % (
            NOBODY, NOBODY), seen()
        d.stop()
        # another user's plugin (0755) is refused
        os.chown(so, 12345, 12345)
        out = run(d, "-t")
        assert out.returncode == 1
        assert b"plugin: %s: owned by uid 12345, not by root or the " \
            b"daemon's user (uid %d)" % (so.encode(), NOBODY) in \
            out.stderr, out.stderr


def test_programs_checked_like_plugins():
    """Item 13: an exec or worker program another user could change
    fails -t, as does one in a directory others may write."""
    d = Daemon("", start=False)
    with d:
        prog = os.path.join(d.dir, "prog")
        with open(prog, "w") as f:
            f.write("#!/bin/sh\ncat >/dev/null\n")
        os.chmod(prog, 0o777)
        base = open(d.conf).read()
        for kind in ("exec", "worker"):
            open(d.conf, "w").write(base + "[handler.h]\n%s = %s\n" % (
                kind, prog))
            out = run(d, "-t")
            assert out.returncode == 1, out
            assert b"%s: %s: writable by group or others (mode 0777)" % (
                kind.encode(), prog.encode()) in out.stderr, out.stderr
        os.chmod(prog, 0o755)
        if os.geteuid() == 0:
            os.chown(prog, 12345, 12345)
            out = run(d, "-t")
            assert out.returncode == 1
            assert b"worker: %s: owned by uid 12345" % prog.encode() in \
                out.stderr, out.stderr
            os.chown(prog, 0, 0)
        os.chmod(d.dir, 0o777)
        out = run(d, "-t")
        assert out.returncode == 1
        assert b"its directory %s is owned by uid" % d.dir.encode() in \
            out.stderr, out.stderr
        os.chmod(d.dir, 0o700)
        out = run(d, "-t")
        assert out.returncode == 0, out


SNOOP = r"""#!/usr/bin/env python3
# A handler running as the daemon's user, looking for the token.
import json, os, sys
update = json.load(sys.stdin)
token = TOKEN.encode()
ppid = os.getppid()
report = {}
try:
    with open("/proc/%d/environ" % ppid, "rb") as f:
        report["environ"] = "found" if token in f.read() else "not found"
except OSError as e:
    report["environ"] = "error: %s" % e.strerror
try:
    found = False
    with open("/proc/%d/maps" % ppid) as maps, \
            open("/proc/%d/mem" % ppid, "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if perms[0] != "r" or hi - lo > (256 << 20):
                continue
            try:
                mem.seek(lo)
                if token in mem.read(hi - lo):
                    found = True
                    break
            except OSError:
                pass
    report["mem"] = "found" if found else "not found"
except OSError as e:
    report["mem"] = "error: %s" % e.strerror
print(json.dumps({"method": "sendMessage",
                  "chat_id": update["message"]["chat"]["id"],
                  "text": json.dumps(report)}))
"""


def test_token_not_readable_from_proc_by_a_handler():
    """Item 14: the daemon not started as root (as under DynamicUser) is
    not dumpable and keeps no token in its environment: a handler of the
    same user finds it neither in /proc/PPID/environ nor /proc/PPID/mem."""
    if need_root():
        return      # setpriv to an unprivileged user
    d = Daemon("", start=False, wrap=AS_NOBODY)
    with d:
        os.chmod(d.dir, 0o755)
        os.makedirs(d.store, 0o700)
        os.chown(d.store, NOBODY, NOBODY)
        snoop = os.path.join(d.dir, "snoop")
        with open(snoop, "w") as f:
            f.write(SNOOP.replace("TOKEN", repr(TOKEN)))
        os.chmod(snoop, 0o755)
        with open(d.conf, "a") as f:
            f.write("[handler.snoop]\nexec = %s\ntimeout = 20s\n" % snoop)
        d.start()
        status, _, _, body = d.deliver(message("hello", 1))
        assert status == 200
        report = json.loads(json.loads(body)["text"])
        assert report["environ"] != "found", report
        assert report["mem"] != "found", report
        # what it got: refused, not merely missed
        assert report["environ"].startswith("error"), report
        assert report["mem"].startswith("error"), report


def test_fifo_directory_and_dev_null_refused_at_once():
    """Item 17: a FIFO as token_file or as -c, a directory or /dev/null as
    -c: a clear message at once (a FIFO used to hang -t and the start)."""
    d = Daemon(HANDLERS, start=False)
    with d:
        fifo = os.path.join(d.dir, "fifo")
        os.mkfifo(fifo, 0o600)
        text = open(d.conf).read().replace(
            "[bot]\n", "[bot]\ntoken_file = %s\n" % fifo)
        open(d.conf, "w").write(text)
        for args in (["-t"], []):
            t0 = time.time()
            out = run(d, *args)
            assert out.returncode == 1, out
            assert b"%s: not a regular file (a FIFO, socket or device)" % \
                fifo.encode() in out.stderr, out.stderr
            assert time.time() - t0 < 15
        for path, want in ((fifo, b"not a regular file (a FIFO"),
                           (d.dir, b"is a directory: -c names the "
                            b"configuration file"),
                           ("/dev/null", b"/dev/null: not a regular file")):
            for args in (["-t"], []):
                out = subprocess.run([binary(), "-c", path] + args,
                                     capture_output=True, env=d.env,
                                     timeout=20)
                assert out.returncode == 1, out
                assert want in out.stderr, out.stderr


def test_check_names_unknown_user_and_warns_of_risky_settings():
    """Item 17: -t fails on a [server] user that does not exist and warns,
    at the line, about settings that open a door."""
    d = Daemon(HANDLERS, webhook="secret_token = abc_DEF-123\n"
               "trusted_proxies = 0.0.0.0/0\n",
               extra="[server]\nuser = tgw-no-such-user\n"
               "[outbox]\nupload_dir = /\n", start=False)
    with d:
        text = open(d.conf).read().replace(
            "[admin]\nlisten = 127.0.0.1:", "[admin]\nlisten = 0.0.0.0:")
        open(d.conf, "w").write(text)
        out = run(d, "-t")
        assert out.returncode == 1, out
        err = out.stderr.decode()
        assert "user: no user 'tgw-no-such-user' on this system: create it" \
            in err, err
        for want in ("warning: secret_token: 11 characters are easy to guess",
                     "warning: trusted_proxies: 0.0.0.0/0 makes every "
                     "address a proxy",
                     "warning: upload_dir: / lets handler output upload",
                     "warning: listen: 0.0.0.0:%d opens /metrics" %
                     d.admin_port):
            assert any(l.startswith(d.conf + ":") and want in l
                       for l in err.splitlines()), (want, err)
        # warnings alone do not fail the check, and reach the log at start
        open(d.conf, "w").write(text.replace("user = tgw-no-such-user\n", ""))
        out = run(d, "-t")
        assert out.returncode == 0, out
        assert b"warning: trusted_proxies" in out.stderr
        d.start()
        d.wait_log("warning: %s:" % d.conf)
        d.wait_log("warning: trusted_proxies: 0.0.0.0/0")
