"""Several instances of one bot on one shared store (issue 14): three
daemons (instances a, b, c), each on its own port, one emulator.  The same
update delivered to two instances at once is handled once; only one
registers the webhook; only one sends, within Telegram's limits as the
emulator enforces them; kill -9 of the sender, or of the poller, and
another takes over within the lease with nothing lost and nothing handled
twice; SIGTERM gives the duties up at once.

The store they share is made by shared_store() alone: a SQLite directory
on this machine, or (each test again, named ..._on_postgresql) a database
of its own on the tests' PostgreSQL server: TGW_TEST_PG, which
tests/run.sh starts (tests/pgserver.py), or else a server of this run's
own."""

import atexit
import http.client
import itertools
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import botapi_emu
from harness import (ROOT, TOKEN, Daemon, binary, eventually, message,
                     post_update, skip, stored_secrets)

sys.path.insert(0, os.path.join(ROOT, "tests"))
import pgserver  # noqa: E402

NAMES = ("a", "b", "c")

# The backend the tests run on: "sqlite", or "postgresql" while an
# ..._on_postgresql test runs.
BACKEND = ["sqlite"]
_PG = {}
_DB_SEQ = itertools.count(1)


def pg_conninfo():
    """The superuser's conninfo of the tests' server (trusted on its
    socket): TGW_TEST_PG, or a server this run starts once."""
    if os.environ.get("TGW_TEST_PG"):
        return os.environ["TGW_TEST_PG"]
    if "server" not in _PG:
        why = pgserver.available()
        if why:
            skip(why)
        _PG["server"] = pgserver.start_new()
        atexit.register(_PG["server"].destroy)
    return _PG["server"].conninfo()


def with_db(conninfo, db):
    return " ".join([x for x in conninfo.split() if not
                     x.startswith("dbname=")] + ["dbname=" + db])


def psql(conninfo, sql):
    out = subprocess.run([os.path.join(pgserver.BIN, "psql"), "-X", "-q",
                          "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo,
                          "-c", sql], check=True, cwd="/",
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=60)
    return out.stdout.decode()


class SharedStore:
    """The store every instance shares: Daemon keyword arguments (kw),
    what the configuration's [store] section gets (conf), the generated
    secrets (secrets()), and close()."""

    def __init__(self, tmp, backend=None, pg=None):
        self.kw = {"store": os.path.join(tmp, "store")}
        self.conf = ""
        self.db = None
        if (backend or BACKEND[0]) == "postgresql":
            base = pg or pg_conninfo()
            # a database of each test's own: no test sees another's rows
            self.db = "tgw_cluster_%d_%d" % (os.getpid(), next(_DB_SEQ))
            self.admin = with_db(base, "postgres")
            psql(self.admin, 'CREATE DATABASE "%s"' % self.db)
            self.conninfo = with_db(base, self.db)
            self.conf = "backend = postgresql\npostgresql = %s\n" % (
                self.conninfo)

    def edit(self, text):
        """The configuration text with the store's keys."""
        return text.replace("[store]\n", "[store]\n" + self.conf, 1)

    def secrets(self, d):
        if self.db is None:
            return stored_secrets(d.store)
        kept = dict(line.split("|") for line in psql(
            self.conninfo, "SELECT name, value FROM tgw_secrets WHERE name "
            "<> 'self_signed_pair'").split())
        return kept["webhook_path"], kept["secret_token"]

    def close(self):
        if self.db is not None:
            psql(self.admin, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)'
                 % self.db)


def shared_store(tmp, backend=None, pg=None):
    """The store every instance shares (a SharedStore): on backend (None:
    this run's, BACKEND), a PostgreSQL one on the server whose superuser's
    conninfo is pg (None: the tests' server)."""
    return SharedStore(tmp, backend, pg)


def runs_script(tmp, calls=1, pause="0.3"):
    """An exec handler that notes each run of an update in RUNS, takes
    a while (so that two deliveries overlap), then makes `calls`
    sendMessage calls to the update's chat."""
    path = os.path.join(tmp, "runs.sh")
    with open(path, "w") as f:
        f.write("#!/bin/sh\ncat >/dev/null\n"
                "echo \"$TGW_UPDATE_ID\" >> %s/RUNS\nsleep %s\ni=1\n"
                "while [ $i -le %d ]; do\n"
                "printf '{\"method\":\"sendMessage\",\"chat_id\":%%s,"
                "\"text\":\"u%%s-%%s\"}\\n' \"$TGW_CHAT_ID\" "
                "\"$TGW_UPDATE_ID\" $i\ni=$((i+1))\ndone\n" % (
                    tmp, pause, calls))
    os.chmod(path, 0o700)
    return path


class Cluster:
    """Instances a, b, c on one store and one emulator; a starts first
    (and so takes the duties).  backend and pg: shared_store()'s."""

    def __init__(self, calls=1, lease="2s", polling=False, pause="0.3",
                 names=NAMES, handler=None, deadline="0s", backend=None,
                 pg=None, extra=""):
        self.tmp = tempfile.TemporaryDirectory(prefix="tgw-cluster-")
        self.emu = botapi_emu.Emulator(TOKEN).start()
        self.polling = polling
        self.store = shared_store(self.tmp.name, backend, pg)
        if handler is None:
            handler = "[handler.runs]\nexec = %s\ntimeout = 10s\n" % (
                runs_script(self.tmp.name, calls, pause))
        else:
            handler = handler(self.tmp.name)
        self.d = {}
        for n in names:
            more = "[cluster]\ninstance = %s\nlease = %s\n%s" % (n, lease,
                                                               extra)
            if polling:
                more += "[bot]\nsource = polling\n[polling]\ntimeout = 2s\n"
            self.d[n] = Daemon(handler,
                               webhook="reply_deadline = %s\n" % deadline,
                               tls=False, register=not polling, start=False,
                               emu=self.emu, extra=more,
                               **self.store.kw)
            with open(self.d[n].conf) as f:
                text = self.store.edit(f.read())
            with open(self.d[n].conf, "w") as f:
                f.write(text)
        for i, n in enumerate(names):
            self.d[n].start(wait_register=i == 0)
            self.d[n].wait_log("cluster: instance %s" % n)
            assert eventually(lambda: "tgwebhookd_duty_held" in
                              self.metrics(n), 10), n
        if not polling:
            self.path, self.secret = self.store.secrets(self.d[names[0]])

    def post(self, name, update):
        """Delivers update to instance name as Telegram would; the HTTP
        status."""
        raw = post_update(self.d[name].port, update, self.path, self.secret,
                          tls=False)
        m = re.match(rb"HTTP/1\.[01] (\d+)", raw)
        assert m, raw
        return int(m.group(1)), raw

    def runs(self):
        try:
            with open(os.path.join(self.tmp.name, "RUNS")) as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    def metrics(self, name):
        """Instance name's /metrics; "" while its admin listener is not
        up yet (it starts after the "serving" line)."""
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" %
                                        self.d[name].admin_port,
                                        timeout=5) as r:
                return r.read().decode()
        except (OSError, http.client.HTTPException):
            return ""

    def holder(self, duty):
        """The live instance whose /metrics says it holds duty, or None."""
        held = [n for n, d in self.d.items() if d.proc is not None and
                'tgwebhookd_duty_held{duty="%s"} 1' % duty in self.metrics(n)]
        assert len(held) <= 1, held
        return held[0] if held else None

    def texts(self):
        return [c.params.get("text") for c in self.emu.calls_of("sendMessage")]

    def kill(self, name):
        self.d[name].kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            for d in self.d.values():
                if d.proc is not None:
                    rc = d.stop()
                    if exc[0] is None:
                        d.check_clean(rc)
        finally:
            for d in self.d.values():
                if d.proc is not None:
                    d.proc.kill()
                    d.proc.wait()
                d.tmp.cleanup()
            self.emu.stop()
            self.store.close()
            self.tmp.cleanup()


def to_a_and_b_at_once(c, u):
    """Delivers u to instances a and b at the same moment: one handles
    it; the other is told "busy" (503: Telegram delivers it again, and
    then gets 200) or, once done, "seen" (200)."""
    got = at_once(c, [("a", u), ("b", u)])
    assert sorted(got) in ([200, 200], [200, 503]), got
    if 503 in got:
        late = "ab"[got.index(503)]
        assert eventually(lambda: c.post(late, u)[0] == 200)


def test_same_update_to_two_instances_at_once_is_handled_once():
    with Cluster() as c:
        for uid in range(1, 9):
            to_a_and_b_at_once(c, message("/go", uid, chat_id=100 + uid))
        assert eventually(lambda: len(c.texts()) == 8)
        assert sorted(c.runs()) == list(range(1, 9)), c.runs()
        assert sorted(c.texts()) == sorted("u%d-1" % i for i in range(1, 9))
        # a redelivery to the third instance, later: not handled again
        assert c.post("c", message("/go", 3, chat_id=103))[0] == 200
        assert c.runs().count(3) == 1


def test_only_one_instance_registers_the_webhook():
    with Cluster() as c:
        assert c.holder("webhook") == "a"
        for n in "bc":
            assert 'tgwebhookd_duty_held{duty="webhook"} 0' in c.metrics(n)
            assert 'instance="%s",clustered="yes"' % n in c.metrics(n)
        assert len(c.emu.calls_of("setWebhook")) == 1
        # every instance is healthy: the others need not register
        for n in NAMES:
            with urllib.request.urlopen("http://127.0.0.1:%d/healthz" %
                                        c.d[n].admin_port, timeout=5) as r:
                assert r.status == 200


def test_one_sender_within_telegrams_limits():
    with Cluster(calls=4, pause="0") as c:
        c.emu.enforce_limits = True
        sender = c.holder("outbox")
        assert sender == "a"
        # 6 chats, each with 4 calls, queued through all three
        for i in range(6):
            assert c.post(NAMES[i % 3], message("/go", 10 + i,
                                                chat_id=200 + i))[0] == 200
        assert eventually(lambda: len(c.texts()) >= 24, 30), c.texts()
        assert c.emu.violations == 0
        texts = c.texts()
        assert sorted(texts) == sorted("u%d-%d" % (10 + i, k)
                                       for i in range(6) for k in (1, 2, 3, 4))
        # each chat's calls in order
        for i in range(6):
            mine = [t for t in texts if t.startswith("u%d-" % (10 + i))]
            assert mine == ["u%d-%d" % (10 + i, k) for k in (1, 2, 3, 4)]
        for n in NAMES:
            if n != sender:
                assert 'tgwebhookd_duty_held{duty="outbox"} 0' in \
                    c.metrics(n)


def test_sender_killed_another_takes_over_within_the_lease():
    with Cluster(calls=8, pause="0") as c:
        c.emu.enforce_limits = True      # one chat: 1 a second
        assert c.holder("outbox") == "a"
        assert c.post("b", message("/go", 30, chat_id=300))[0] == 200
        assert eventually(lambda: len(c.texts()) >= 2, 10)
        c.kill("a")
        killed = time.time()
        sent = len(c.texts())
        assert eventually(lambda: len(c.texts()) > sent, 15)
        took = time.time() - killed
        # the lease (2 s) runs out, a standby takes it at its next try
        # (lease / 10), waits chat_interval (1 s), then the 1/s chat
        # pace: well under the lease twice over
        assert took < 2 * 2 + 2, took
        new = c.holder("outbox")
        assert new in ("b", "c")
        # a took the free duty at its first start and sent at once; the
        # new holder took an expired lease over: it waited chat_interval
        assert "outbox: sending now: the outbox duty was free" in \
            c.d["a"].log()
        assert "outbox: sending from" not in c.d["a"].log()
        assert "outbox: sending from 1000 ms on" in c.d[new].log()
        assert eventually(lambda: set(c.texts()) >=
                          set("u30-%d" % k for k in range(1, 9)), 20), \
            c.texts()
        # none lost; a call in flight at the kill may go twice (at least
        # once), never more
        for k in range(1, 9):
            assert 1 <= c.texts().count("u30-%d" % k) <= 2, c.texts()
        assert c.emu.violations == 0


def test_sigterm_gives_the_duties_up_at_once():
    with Cluster(lease="30s") as c:
        assert c.holder("outbox") == "a" and c.holder("webhook") == "a"
        t0 = time.time()
        assert c.d["a"].stop() == 0
        assert eventually(lambda: c.holder("outbox") is not None, 10)
        assert eventually(lambda: c.holder("webhook") is not None, 10)
        # far sooner than the 30 s lease
        assert time.time() - t0 < 10
        assert "gave the outbox duty up" in c.d["a"].log()
        # and the new holder sends what is queued now: a gave the duty up
        # once it had stopped sending, so no pause
        n = c.holder("outbox")
        assert eventually(lambda: "outbox: sending now: the outbox duty "
                          "was free" in c.d[n].log(), 10)
        assert "outbox: sending from" not in c.d[n].log()
        other = [x for x in "bc" if x != n][0]
        assert c.post(other, message("/go", 40, chat_id=400))[0] == 200
        assert eventually(lambda: "u40-1" in c.texts(), 10)


def push(c, chat):
    """Queues a /go for getUpdates under the emulator's next id."""
    u = message("/go", 0, chat_id=chat)
    del u["update_id"]
    return c.emu.push_update(u)


def test_polling_poller_killed_another_continues_from_the_offset():
    with Cluster(polling=True, lease="2s", pause="0") as c:
        assert eventually(lambda: c.holder("polling") == "a", 5)
        for i in range(5):
            push(c, 500 + i)
        assert eventually(lambda: len(c.runs()) == 5, 15), c.runs()
        first = sorted(c.runs())
        c.kill("a")
        # what a, the sender, delivered: those whose outcomes it had not
        # yet written (it writes them in batches) go again, at least once
        sent = set(c.texts())
        for i in range(5):
            push(c, 600 + i)
        assert eventually(lambda: len(set(c.runs())) == 10, 20), c.runs()
        new = c.holder("polling")
        assert new in ("b", "c")
        # it took the offset the dead poller kept, not its own start's
        assert "holds the polling duty: polling from offset %d" % (
            first[-1] + 1) in c.d[new].log(), c.d[new].log()[-3000:]
        # every update handled once, the first five not again
        assert sorted(c.runs()) == sorted(set(c.runs())), c.runs()
        assert eventually(lambda: len(set(c.texts())) == 10, 15), c.texts()
        again = [t for t in c.texts() if c.texts().count(t) > 1]
        assert set(again) <= sent, (again, sent)
        # only the holder polls: no 409 between instances
        for n in "bc":
            assert "another getUpdates is running" not in c.d[n].log()


def form_script(tmp, pause="0.5"):
    """[handler.form]: an exec handler with state_io = on that notes its
    start and end in RUNS ("+id", "-id"), takes pause seconds, answers
    what state it found and moves the conversation one step on (s1,
    s2, ...)."""
    path = os.path.join(tmp, "form.sh")
    with open(path, "w") as f:
        f.write("#!/bin/sh\ncat >/dev/null\n"
                "echo \"+$TGW_UPDATE_ID\" >> %s/RUNS\nsleep %s\n"
                "n=${TGW_STATE#s}\n[ -z \"$n\" ] && n=0\n"
                "printf '{\"method\":\"sendMessage\",\"chat_id\":%%s,"
                "\"text\":\"u%%s saw %%s\"}\\n' \"$TGW_CHAT_ID\" "
                "\"$TGW_UPDATE_ID\" \"${TGW_STATE:-none}\"\n"
                "printf '{\"state\":{\"name\":\"s%%d\"}}\\n' $((n+1))\n"
                "echo \"-$TGW_UPDATE_ID\" >> %s/RUNS\n" % (tmp, pause, tmp))
    os.chmod(path, 0o700)
    return "[handler.form]\nupdates = message\nexec = %s\ntimeout = 10s\n" \
        "state_io = on\n" % path


def run_marks(c):
    try:
        with open(os.path.join(c.tmp.name, "RUNS")) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def at_once(c, posts):
    """Posts (instance, update) pairs at the same moment; their statuses."""
    got = {}
    go = threading.Barrier(len(posts))

    def send(i, name, u):
        go.wait()
        got[i] = c.post(name, u)[0]
    ts = [threading.Thread(target=send, args=(i, n, u))
          for i, (n, u) in enumerate(posts)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return [got[i] for i in range(len(posts))]


def test_one_conversation_on_two_instances_at_once_runs_one_at_a_time():
    with Cluster(handler=form_script, deadline="5s", names="ab") as c:
        for rnd in range(3):
            chat = 700 + rnd
            first, second = 10 * rnd + 71, 10 * rnd + 72
            got = at_once(c, [("a", message("hi", first, chat_id=chat)),
                              ("b", message("hi", second, chat_id=chat))])
            # the one that waited for the other's lease ran once that
            # one's state was committed: both answered within the deadline
            assert got == [200, 200], got
            mine = [t for t in run_marks(c) if t[1:] in (str(first),
                                                        str(second))]
            # one at a time: a start, its end, the other's start, its end
            assert len(mine) == 4 and mine[0][1:] == mine[1][1:] and \
                mine[0][0] == "+" and mine[1][0] == "-", mine
            one, two = int(mine[0][1:]), int(mine[2][1:])
            # the second saw the first's state; follow-ups in that order
            want = ["u%d saw none" % one, "u%d saw s1" % two]
            assert eventually(lambda: [t for t in c.texts() if t.startswith(
                ("u%d " % first, "u%d " % second))] == want, 10), c.texts()
        waited = c.d["a"].log() + c.d["b"].log()
        assert "waits for another instance's update of chat" in waited


def test_one_conversation_busy_elsewhere_past_the_deadline_is_503():
    with Cluster(handler=lambda tmp: form_script(tmp, pause="3"),
                 deadline="1s", names="ab") as c:
        # a's handler runs on past its deadline: answered, held
        assert c.post("a", message("hi", 81, chat_id=800))[0] == 200
        assert eventually(lambda: "+81" in run_marks(c), 5)
        t0 = time.time()
        assert c.post("b", message("hi", 82, chat_id=800))[0] == 503
        # waited its deadline for the lease, not more, and never ran
        assert 0.8 < time.time() - t0 < 3, time.time() - t0
        assert "+82" not in run_marks(c)
        assert "another instance still handles its conversation at " \
            "reply_deadline" in c.d["b"].log()
        # Telegram delivers it again: once a committed, it runs on a's state
        assert eventually(lambda: "-81" in run_marks(c), 10)
        assert eventually(lambda: c.post("b", message(
            "hi", 82, chat_id=800))[0] == 200, 10)
        assert eventually(lambda: c.texts() == ["u81 saw none",
                                                "u82 saw s1"], 10), \
            c.texts()


def test_held_update_replayed_only_once_its_instance_died():
    with Cluster(pause="6", lease="2s") as c:
        # b and c are away while a holds the update (reply_deadline 0:
        # answered at once, its handler still running)
        for n in "bc":
            assert c.d[n].stop() == 0
        assert c.post("a", message("/go", 90, chat_id=900))[0] == 200
        assert eventually(lambda: c.runs() == [90], 5), c.runs()
        since = {n: len(c.d[n].log()) for n in "bc"}
        for n in "bc":
            c.d[n].start(wait_register=False)
        # at start, and at the pick-up a lease later, each leaves it to
        # a, which still runs it
        for n in "bc":
            c.d[n].wait_log("update 90: held, and another live instance "
                            "handles it; left to it", 10, since[n])
            at = c.d[n].log(since[n]).index("left to it") + 10
            c.d[n].wait_log("update 90: held, and another live instance "
                            "handles it; left to it", 10, since[n] + at)
        assert c.runs() == [90], c.runs()
        # a dies mid-handler: once its claim expires (2 s), one of b, c
        # replays it, once; its call goes out once
        c.kill("a")
        assert eventually(lambda: c.runs() == [90, 90], 10), c.runs()
        assert eventually(lambda: c.texts() == ["u90-1"], 15), c.texts()
        replayed = [n for n in "bc" if "update 90: its handler was still "
                    "running when the instance that held it stopped" in
                    c.d[n].log(since[n])]
        assert len(replayed) == 1, replayed
        assert c.runs() == [90, 90]


def test_two_instances_given_one_name_never_both_act():
    """A copied configuration (or one host name in two containers): two
    instances called a.  Claims and leases are held by the name and a
    mark of the process, so they still handle each update once and only
    one holds each duty."""
    with Cluster(names=("a", "b")) as c:
        # b's configuration says instance = a too: start it again so
        c.d["b"].stop()
        with open(c.d["b"].conf) as f:
            text = f.read()
        with open(c.d["b"].conf, "w") as f:
            f.write(text.replace("instance = b", "instance = a"))
        c.d["b"].start(wait_register=False)
        c.d["b"].wait_log("cluster: instance a")
        assert eventually(lambda: "tgwebhookd_duty_held" in c.metrics("b"),
                          10)
        for uid in range(1, 7):
            to_a_and_b_at_once(c, message("/go", uid, chat_id=200 + uid))
        assert eventually(lambda: len(c.texts()) == 6)
        assert sorted(c.runs()) == list(range(1, 7)), c.runs()
        for duty in ("outbox", "webhook"):
            held = ['tgwebhookd_duty_held{duty="%s"} 1' % duty in
                    c.metrics(n) for n in "ab"]
            assert held.count(True) == 1, (duty, held)


def outbox_of(d):
    """tgwebhookd --outbox with instance d's configuration: its output."""
    out = subprocess.run([binary(), "-c", d.conf, "--outbox"],
                         capture_output=True, text=True, env=d.env,
                         timeout=30)
    assert out.returncode == 0, out
    return out.stdout


def test_outbox_names_the_sender_from_any_instance():
    with Cluster(lease="30s") as c:
        assert c.holder("outbox") == "a"
        for n in NAMES:
            out = outbox_of(c.d[n])
            m = re.search(r"^sender: instance a \(a#[0-9a-f]{8}\) holds the "
                          r"outbox duty; its lease ends in (\d+)\.\ds "
                          r"unless renewed$", out, re.M)
            assert m, out
            assert int(m.group(1)) <= 30, out
        # a clean stop hands it over; every instance says who has it now
        assert c.d["a"].stop() == 0
        assert eventually(lambda: c.holder("outbox") in ("b", "c"), 10)
        new = c.holder("outbox")
        for n in "bc":
            assert "sender: instance %s (%s#" % (new, new) in outbox_of(
                c.d[n]), outbox_of(c.d[n])
        # every instance stopped: the duty is given up, nobody sends
        for n in "bc":
            assert c.d[n].stop() == 0
        out = outbox_of(c.d["a"])
        assert ("sender: no instance holds the outbox duty now" if
                BACKEND[0] == "postgresql" else "sender: no outbox duty "
                "held: a daemon alone on this store (not clustered) sends "
                "itself; instances clustered") in out, out
    if BACKEND[0] == "sqlite":
        # one daemon alone on its SQLite store: no duty, it says so
        d = Daemon("[handler.hi]\nreply = hello\n", tls=False,
                   register=False, start=False)
        with d:
            assert "(not clustered) sends itself" in outbox_of(d), \
                outbox_of(d)


def _on_postgresql(test):
    def run():
        BACKEND[0] = "postgresql"
        try:
            test()
        finally:
            BACKEND[0] = "sqlite"
    run.__doc__ = test.__doc__
    return run


# every test again on a PostgreSQL store: test_..._on_postgresql
for _name, _fn in list(globals().items()):
    if _name.startswith("test_") and callable(_fn):
        globals()[_name + "_on_postgresql"] = _on_postgresql(_fn)
