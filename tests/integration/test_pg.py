"""The daemon on a PostgreSQL store ([store] backend = postgresql), against
a server of the test's own (tests/pgserver.py: initdb in a temporary
directory, run as nobody, on a unix socket, stopped at the end): an update
handled with its follow-up delivered, the generated secrets kept in the
database across a restart; -t's diagnosis of each fault (server stopped,
wrong user or password, no database, no permission, a password in the
configuration); and the server stopped while the daemon runs: 503 with
Retry-After and /healthz naming the cause, then, once it is back,
requests succeed and nothing queued is lost."""

import os
import subprocess
import sys

from harness import (ROOT, TOKEN, Daemon, binary, calls_script, eventually,
                     message, post_update, raw_request, skip, texts)

from test_faults import health

sys.path.insert(0, os.path.join(ROOT, "tests"))
import pgserver  # noqa: E402


def server():
    why = pgserver.available()
    if why:
        skip(why)
    return pgserver.start_new()


def pg_daemon(pg, n=2, conninfo=None, outbox="", start=True, register=True):
    """A daemon whose store is pg's database tgw, as user tgw (its
    password from a PGPASSFILE), with an exec handler making n calls."""
    d = Daemon("", start=False, register=register,
               env={"PGPASSFILE": pg.passfile},
               extra="[outbox]\n" + outbox)
    with open(d.conf) as f:
        text = f.read()
    text = text.replace("[store]\n", "[store]\nbackend = postgresql\n"
                        "postgresql = %s\n" % (conninfo or
                                               pg.conninfo(user="tgw")), 1)
    with open(d.conf, "w") as f:
        f.write(text + "[handler.calls]\nexec = %s\n" % calls_script(d, n))
    if start:
        d.start()
    return d


def check(d, env=None):
    """tgwebhookd -t: its exit code and everything it printed."""
    p = subprocess.run([binary(), "-t", "-c", d.conf], env=dict(
        d.env, **(env or {})), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, timeout=60)
    return p.returncode, p.stdout.decode()


def set_conninfo(d, conninfo):
    with open(d.conf) as f:
        lines = f.read().split("\n")
    lines = ["postgresql = " + conninfo if x.startswith("postgresql =")
             else x for x in lines]
    with open(d.conf, "w") as f:
        f.write("\n".join(lines))


def test_pg_update_handled_and_secrets_kept_in_database():
    pg = server()
    try:
        d = pg_daemon(pg)
        with d:
            status, _, _, body = d.deliver(message("hi", 11, chat_id=11))
            assert status == 200 and b'"m11-1"' in body, (status, body)
            d.emu.wait_calls("sendMessage", 1)
            assert texts(d) == ["m11-2"], texts(d)
            kept = pg.psql("SELECT name FROM tgw_secrets ORDER BY name")
            # the generated certificate too (self_signed = on): every
            # instance serves the one kept there
            assert kept.split() == ["secret_token", "self_signed_pair",
                                    "webhook_path"], kept
            path = pg.psql("SELECT value FROM tgw_secrets WHERE name = "
                           "'webhook_path'").strip()
            url = d.emu.calls_of("setWebhook")[0].params["url"]
            assert url.endswith("/" + path), (url, path)
            # rows keyed by the bot: the token's id
            bots = pg.psql("SELECT DISTINCT bot FROM tgw_calls").split()
            assert bots == [TOKEN.split(":")[0]], bots
            assert not os.path.exists(os.path.join(d.store,
                                                   "tgwebhookd.db"))
            # the operator's commands read the same database
            out = subprocess.run([binary(), "-c", d.conf, "--outbox"],
                                 capture_output=True, text=True, env=d.env,
                                 timeout=30)
            assert out.returncode == 0, out
            assert "failed updates (handler failed" in out.stdout, out.stdout
            # a restart serves the same path, read from the database
            assert d.stop() == 0
            d.start()
            urls = [c.params["url"] for c in d.emu.calls_of("setWebhook")]
            assert urls[-1] == url, urls
            status, _, _, body = d.deliver(message("hi", 12, chat_id=12))
            assert status == 200 and b'"m12-1"' in body
            assert "password" not in d.log().lower().replace(
                "no password in", ""), d.log()
    finally:
        pg.destroy()


def test_pg_check_says_what_is_wrong():
    pg = server()
    try:
        d = pg_daemon(pg, start=False)
        with d:
            rc, out = check(d)
            assert rc == 0 and "store: PostgreSQL reached" in out and \
                "configuration OK" in out, out
            # -t tried the schema's creation in a transaction it rolled
            # back: nothing was made
            assert pg.psql("SELECT to_regclass('tgw_schema')").strip() == \
                "", "-t created the schema"
            # no such database
            set_conninfo(d, pg.conninfo(user="tgw", dbname="nosuch"))
            rc, out = check(d)
            assert rc == 1 and "no such database (3D000): create it " \
                "(createdb" in out and "[store] postgresql" in out, out
            # no such user, and a wrong password
            set_conninfo(d, pg.conninfo(user="nosuchuser"))
            rc, out = check(d)
            assert rc == 1 and "authentication failed" in out and \
                "pg_hba.conf" in out, out
            set_conninfo(d, pg.conninfo(user="tgw"))
            rc, out = check(d, {"PGPASSFILE": "/dev/null",
                                "PGPASSWORD": "wrong-one"})
            assert rc == 1 and "password authentication failed" in out and \
                "~/.pgpass" in out, out
            assert "wrong-one" not in out, out
            # connected, but the user may not create or read the tables
            set_conninfo(d, pg.conninfo(user="tgw_noperm"))
            rc, out = check(d)
            assert rc == 1 and "no permission, 42501: GRANT" in out, out
            # a password in the configuration: refused, never printed
            set_conninfo(d, "postgresql://tgw:s3cret-pw@localhost/tgw")
            rc, out = check(d)
            assert rc == 1 and "holds a password" in out and \
                "PGPASSFILE" in out, out
            assert "s3cret-pw" not in out, out
            # the server stopped
            set_conninfo(d, pg.conninfo(user="tgw"))
            pg.stop()
            rc, out = check(d)
            assert rc == 1 and "the server is unreachable" in out and \
                "pg_isready" in out, out
    finally:
        pg.destroy()


def test_pg_stopped_answers_503_then_recovers_losing_nothing():
    pg = server()
    try:
        # one call a second to a chat: follow-ups are still queued when
        # the server stops
        d = pg_daemon(pg, n=4, outbox="chat_interval = 1s\n")
        with d:
            status, _, _, body = d.deliver(message("x", 21, chat_id=21))
            assert status == 200 and b'"m21-1"' in body, (status, body)
            pg.stop()
            status, _, headers, body = d.deliver(message("x", 22,
                                                         chat_id=22))
            assert status == 503, (status, body)
            assert headers.get("retry-after"), headers
            assert body == b""
            code, h = eventually(lambda: (lambda r: r if r[0] == 503
                                          else None)(health(d)))
            assert code == 503 and "connect" in h["store"], h
            pg.start()
            # Telegram's retry is handled once the server is back
            assert eventually(lambda: d.deliver(message(
                "x", 22, chat_id=22))[0] == 200, 30)
            assert eventually(lambda: health(d)[0] == 200, 30), health(d)
            want = {"m21-2", "m21-3", "m21-4", "m22-2", "m22-3", "m22-4"}
            assert eventually(lambda: want <= set(texts(d)), 60), texts(d)
    finally:
        pg.destroy()


def test_pg_idle_connections_the_server_closed_are_opened_again():
    """pg_terminate_backend() of the daemon's idle connections (as a
    failover does): the next statement notices before it is sent, even one
    that must not run twice, such as a dead letter's insert, which used to
    fail there (503: the handler ran again at the next delivery)."""
    pg = server()
    try:
        d = pg_daemon(pg, start=False)
        with open(os.path.join(d.dir, "calls"), "w") as f:
            f.write("#!/bin/sh\ncat >/dev/null\nexit 1\n")
        d.start()
        ours = ("FROM pg_stat_activity WHERE application_name LIKE "
                "'tgwebhookd%'")
        with d:
            for i in range(3):
                status, _, _, _ = d.deliver(message("x", 100 + i,
                                                    chat_id=100 + i))
                assert status == 200, (i, status)
                pg.psql("SELECT pg_terminate_backend(pid) " + ours)
                assert eventually(lambda: pg.psql(
                    "SELECT count(*) " + ours).strip() == "0", 10)
                status, _, _, body = d.deliver(message("x", 200 + i,
                                                       chat_id=200 + i))
                assert status == 200, (i, status, body, d.log()[-2000:])
            dead = pg.psql("SELECT update_id FROM tgw_dead_updates "
                           "ORDER BY 1").split()
            assert dead == [str(u) for u in (100, 101, 102, 200, 201, 202)
                            ], dead
            log = d.log()
            assert "the server closed an idle connection" in log, log
            # what the server said on its way out is a line of ours
            for line in log.splitlines():
                if "FATAL" in line:
                    assert "the server says" in line or "idle" in line, \
                        line
    finally:
        pg.destroy()


def test_pg_started_as_root_hands_over_a_store_dir_it_made():
    """Started as root with [server] user, the daemon hands [store] dir
    (where the generated certificate goes) to that user: with the
    PostgreSQL backend nothing else makes it, so the daemon does (before:
    it stopped at start, '[store] dir: No such file or directory')."""
    if os.geteuid() != 0:
        skip("needs root (to start the daemon as root with [server] user)")
    pg = server()
    try:
        d = Daemon("[handler.hi]\nreply = hello\n", tls=False,
                   register=False, extra="[server]\nuser = nobody\n",
                   start=False)
        with open(d.conf) as f:
            text = f.read()
        # the superuser, trusted on the socket: nobody has no password file
        text = text.replace("[store]\n", "[store]\nbackend = postgresql\n"
                            "postgresql = %s\n" % pg.conninfo(), 1)
        with open(d.conf, "w") as f:
            f.write(text)
        assert not os.path.exists(d.store)
        with d:
            d.start()
            st = os.stat(d.store)
            assert st.st_uid == 65534 and st.st_mode & 0o777 == 0o700, st
            kept = dict(line.split("|") for line in pg.psql(
                "SELECT name, value FROM tgw_secrets WHERE name <> "
                "'self_signed_pair'").split())
            out = post_update(d.port, message("hi", 31, chat_id=31),
                              kept["webhook_path"], kept["secret_token"],
                              tls=False)
            assert out.startswith(b"HTTP/1.1 200") and b"hello" in out, out
    finally:
        pg.destroy()


class Locker:
    """A psql session of its own holding LOCK TABLE table until release():
    every statement of the daemon's on that table waits."""

    def __init__(self, pg, table):
        self.p = subprocess.Popen(
            [os.path.join(pgserver.BIN, "psql"), "-X", "-q", "-h", pg.sock,
             "-p", str(pgserver.PORT), "-U", "postgres", "-d", "tgw"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, text=True, cwd="/")
        self.p.stdin.write("BEGIN; LOCK TABLE %s IN ACCESS EXCLUSIVE MODE;\n"
                           % table)
        self.p.stdin.flush()
        assert eventually(lambda: pg.psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON "
            "c.oid = l.relation WHERE c.relname = '%s' AND l.mode = "
            "'AccessExclusiveLock' AND l.granted" % table).strip() != "0",
            30), "the lock was not taken"

    def release(self):
        if self.p.poll() is None:
            self.p.communicate("ROLLBACK;\n\\q\n", timeout=30)


def test_pg_slow_database_answers_503_in_bounded_time_then_recovers():
    """A lock held on tgw_claims makes every claim wait: a claim gives up
    after 0.5 s (its lock timeout; 0.5 s for a free connection), so
    that the server's few connection threads (one per core) are not all
    held.  Eight updates at once are each answered 503 + Retry-After
    within 5 s (before: one connection behind a mutex and the store's
    3 s lock timeout, 24 s for the last); /healthz names the lock; once
    it is gone each is handled once, with its follow-ups."""
    import json
    import threading
    import time
    pg = server()
    try:
        d = pg_daemon(pg, n=2)
        with d:
            status, _, _, body = d.deliver(message("x", 40, chat_id=40))
            assert status == 200 and b'"m40-1"' in body, (status, body)
            kept = dict(line.split("|") for line in pg.psql(
                "SELECT name, value FROM tgw_secrets WHERE name IN "
                "('webhook_path', 'secret_token')").split())
            lock = Locker(pg, "tgw_claims")
            answers = {}

            def post(i):
                t0 = time.monotonic()
                body = json.dumps(message("x", 41 + i, chat_id=41 + i))
                out = raw_request(d.port, (
                    "POST /%s HTTP/1.1\r\nHost: localhost\r\n"
                    "Content-Type: application/json\r\n"
                    "Content-Length: %d\r\n"
                    "X-Telegram-Bot-Api-Secret-Token: %s\r\n"
                    "Connection: close\r\n\r\n%s" % (
                        kept["webhook_path"], len(body),
                        kept["secret_token"], body)).encode(), timeout=30)
                answers[i] = (out, time.monotonic() - t0)
            # /healthz is 503 from a claim's timeout until the next
            # statement that works (a lease's renewal): watched all along,
            # not sampled, so that a short window is not missed
            seen, done = [], threading.Event()

            def watch():
                while not done.is_set():
                    code, h = health(d)
                    if code == 503:
                        seen.append(h)
            try:
                w = threading.Thread(target=watch)
                w.start()
                ts = [threading.Thread(target=post, args=(i,))
                      for i in range(8)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join(60)
            finally:
                done.set()
                lock.release()
            w.join(30)
            assert any("lock" in h["store"] or "busy" in h["store"]
                       for h in seen), seen
            for i, (out, took) in sorted(answers.items(), key=lambda x: -x[1][1]):
                assert out.startswith(b"HTTP/1.1 503"), (i, out[:200])
                assert b"\r\nretry-after:" in out.lower(), out[:300]
                print("# update %d: 503 in %.1f s" % (41 + i, took))
                assert took < 5, (i, took)
            assert len(answers) == 8, answers
            # Telegram's retries: handled, once each
            for i in range(8):
                assert eventually(lambda: d.deliver(message(
                    "x", 41 + i, chat_id=41 + i))[0] == 200, 30)
            assert eventually(lambda: health(d)[0] == 200, 30), health(d)
            want = {"m%d-2" % (41 + i) for i in range(8)}
            assert eventually(lambda: want <= set(texts(d)), 60), texts(d)
            assert sorted(t for t in texts(d) if t in want) == sorted(want)
    finally:
        pg.destroy()


def pg_instance(pg, emu, name):
    d = Daemon("[handler.hi]\nreply = hello\n", emu=emu, start=False,
               env={"PGPASSFILE": pg.passfile},
               extra="[cluster]\ninstance = %s\n" % name)
    with open(d.conf) as f:
        text = f.read()
    with open(d.conf, "w") as f:
        f.write(text.replace("[store]\n", "[store]\nbackend = postgresql"
                             "\npostgresql = %s\n" % pg.conninfo(
                                 user="tgw"), 1))
    return d


def end_instances(ds, emu, pg):
    """What a test of several instances started: killed and removed."""
    for d in ds:
        if d.proc is not None:
            d.proc.kill()
            d.proc.wait()
        d.tmp.cleanup()
    emu.stop()
    pg.destroy()


def test_pg_self_signed_certificate_shared_by_instances():
    """self_signed = on, two instances on one PostgreSQL store, each with
    its own certificate paths, started at the same moment: the first to
    keep its pair in the store (an insert if absent) wins; both write that
    one, byte for byte (the key 0600), setWebhook uploads it, and
    Telegram's deliveries, which trust only the upload, reach both."""
    import threading
    import botapi_emu
    pg = server()
    emu = botapi_emu.Emulator(TOKEN).start()
    ds = []
    try:
        ds += [pg_instance(pg, emu, name) for name in "ab"]
        ts = [threading.Thread(target=d.start, kwargs={
            "wait_register": False}) for d in ds]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert all(d.proc is not None for d in ds)
        emu.wait_calls("setWebhook", 1)
        # the call is recorded before the emulator takes the webhook in
        assert eventually(lambda: emu.webhook is not None and
                          emu.webhook["cert"] is not None)
        pems = [open(os.path.join(d.store, "webhook.pem"), "rb").read()
                for d in ds]
        keys = [os.path.join(d.store, "webhook.key") for d in ds]
        assert pems[0] == pems[1] and pems[0].startswith(
            b"-----BEGIN CERTIFICATE-----"), pems
        assert open(keys[0], "rb").read() == open(keys[1], "rb").read()
        for k in keys:
            assert os.stat(k).st_mode & 0o777 == 0o600, oct(os.stat(k).st_mode)
        with open(emu.webhook["cert"], "rb") as f:
            assert f.read().strip() == pems[0].strip()
        made = sum(d.log().count("making a self-signed certificate")
                   for d in ds)
        assert made >= 1, [d.log() for d in ds]
        assert any("writing the one kept in the store" in d.log()
                   for d in ds) or made == 2, [d.log() for d in ds]
        kept = pg.psql("SELECT count(*) FROM tgw_secrets WHERE name = "
                       "'self_signed_pair'").strip()
        assert kept == "1", kept
        # the emulator trusts only the uploaded certificate: both serve it
        for i, d in enumerate(ds):
            emu.forward = ("127.0.0.1", d.port)
            status, _, _, body = emu.deliver(message("hi", 50 + i,
                                                     chat_id=50 + i),
                                             keepalive=False)
            assert status == 200 and b"hello" in body, (status, body)
        for d in ds:
            assert "BEGIN PRIVATE KEY" not in d.log()
            d.check_clean(d.stop())
    finally:
        end_instances(ds, emu, pg)



def test_pg_instance_with_a_certificate_of_its_own():
    """Instances on one store, one of them with self-signed certificate
    files of its own (it ran alone before): with no pair in the store
    yet, its pair is kept there and the next instance serves it; an
    instance whose own self-signed certificate is another is refused at
    start, saying which files to remove, and once they are gone it
    serves the store's."""
    import botapi_emu
    pg = server()
    emu = botapi_emu.Emulator(TOKEN).start()
    ds = []
    try:
        a, b, c = (pg_instance(pg, emu, n) for n in "abc")
        ds += [a, b, c]
        for d in (a, c):    # a and c each made a pair, running alone
            os.makedirs(d.store, mode=0o700, exist_ok=True)
            subprocess.run(["openssl", "req", "-x509", "-newkey",
                            "rsa:2048", "-nodes", "-days", "30", "-subj",
                            "/CN=localhost", "-addext",
                            "subjectAltName=DNS:localhost", "-keyout",
                            os.path.join(d.store, "webhook.key"), "-out",
                            os.path.join(d.store, "webhook.pem")],
                           check=True, capture_output=True)
            os.chmod(os.path.join(d.store, "webhook.key"), 0o600)
        mine = open(os.path.join(a.store, "webhook.pem"), "rb").read()
        a.start()
        assert "kept in the store, so that every instance serves it" in \
            a.log(), a.log()
        b.start(wait_register=False)
        assert open(os.path.join(b.store, "webhook.pem"), "rb").read() == \
            mine
        p = subprocess.run([binary(), "-c", c.conf], env=c.env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=60)
        out = p.stdout.decode()
        assert p.returncode != 0, out
        assert "not the one kept in the store" in out and \
            os.path.join(c.store, "webhook.key") in out, out
        for f in ("webhook.pem", "webhook.key"):
            os.unlink(os.path.join(c.store, f))
        c.start(wait_register=False)
        assert open(os.path.join(c.store, "webhook.pem"), "rb").read() == \
            mine
        with open(emu.webhook["cert"], "rb") as f:
            assert f.read().strip() == mine.strip()
        for i, d in enumerate(ds):
            emu.forward = ("127.0.0.1", d.port)
            status, _, _, body = emu.deliver(message("hi", 70 + i,
                                                     chat_id=70 + i),
                                             keepalive=False)
            assert status == 200 and b"hello" in body, (status, body)
        for d in ds:
            d.check_clean(d.stop())
    finally:
        end_instances(ds, emu, pg)
