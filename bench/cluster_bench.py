"""bench/cluster_bench.py: several instances of one bot on one store
(issue 14), in one run, against the Bot API emulator and a PostgreSQL
server this bench starts itself (Debian's postgresql-15, as
tests/pgserver.py does, but with the server's defaults for durability:
fsync on, as a user runs it).  Three measurements:

1. webhook updates a second with follow-ups: bench/handlers/followup.c
   answers each update inline and queues one follow-up to its chat; wrk
   (bench/cluster.lua, a fresh update_id and chat per request, every
   answer checked) against one instance, and against three (one wrk per
   instance, the same connections in all), on SQLite (one directory
   the instances share) and on PostgreSQL.  The outbox is opened up (1,000
   calls a second, no per-chat interval) so that Telegram's limits do not
   hide the store's cost; each run lasts until every follow-up reached the
   emulator.  CPU per update of the daemons and of the database server
   (the postmaster and its backends), from their own accounting;
2. the cost of one queued call (bench/enqueue.c) on each backend;
3. 1,000 updates from 1,000 chats spread over three instances on
   PostgreSQL, each answered inline with one follow-up, against the
   emulator enforcing Telegram's limits: how long until the 1,000th
   follow-up reached it (target: at most 34 s; the floor at 30 a second
   is 33.3 s), and the 429s (target: none).

Not a test: compare figures of one run.  Printed, and written to
bench/RESULTS.md as its section "Several instances (issue 14)" (the rest
of the file is kept).  BENCH_SECONDS (8), BENCH_CLUSTER_CONNS (12 in
all), N (1000) shape a run.  Skips, saying why, when PostgreSQL or wrk is
not installed."""

import http.client
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from harness import BUILD, TOKEN, Daemon, message  # noqa: E402
import botapi_emu  # noqa: E402  (on the path harness gives)
import pgserver  # noqa: E402
from webhook_bench import cpu_ticks  # noqa: E402

DURATION = int(os.environ.get("BENCH_SECONDS", "8"))
CONNS = int(os.environ.get("BENCH_CLUSTER_CONNS", "12"))
N = int(os.environ.get("N", "1000"))
PATH = "hook-Cl5tEr8bEnCh2pL9mW4xR7tY1uB6"
SECRET = "cluster_bench-s3cret-T0ken"
NAMES = ("a", "b", "c")
FOLLOWUP = "And a follow-up."
RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")
SECTION = "## Several instances (issue 14)"


class PgServer(pgserver.Server):
    """tests/pgserver.py's server (initdb as an unprivileged user, a unix
    socket in its directory, roles tgw and postgres), started with the
    server's own durability defaults: the tests' fsync = off would make
    every commit here cheaper than a user's."""

    def start(self):
        # pg_stat_statements: what the instances ask of it per update
        opts = ("-k %s -c listen_addresses='' -p %d -c max_connections=60 "
                "-c shared_preload_libraries=pg_stat_statements "
                "-c pg_stat_statements.track_planning=on"
                % (self.sock, pgserver.PORT))
        self._run(pgserver._as_user() + [
            os.path.join(pgserver.BIN, "pg_ctl"), "-D", self.data, "-l",
            self.log, "-o", opts, "-w", "-t", "60", "start"])
        return self

    def statements(self, db):
        """(statements, their planning ms, their execution ms, commits)
        in db since stats_reset(db)."""
        calls, plan, run = self.psql(
            "SELECT sum(calls), sum(total_plan_time), sum(total_exec_time) "
            "FROM pg_stat_statements WHERE dbid = (SELECT oid FROM "
            "pg_database WHERE datname = current_database())",
            dbname=db).strip().split("|")
        commits = self.psql("SELECT xact_commit FROM pg_stat_database "
                            "WHERE datname = current_database()", dbname=db)
        return (int(calls), float(plan), float(run),
                int(commits) - self.commits0)

    def stats_reset(self, db):
        self.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
                  dbname=db)
        self.psql("SELECT pg_stat_statements_reset()", dbname=db)
        self.commits0 = int(self.psql(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = "
            "current_database()", dbname=db))

    def postmaster(self):
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            return int(f.readline())


def handler():
    # absolute: the daemons run elsewhere, and TGW_BUILD may be relative
    # (make bench passes "build")
    return "[handler.hello]\ncommands = /start\nplugin = %s\n" % (
        os.path.join(os.path.abspath(BUILD), "bench", "followup.so"))


class Instances:
    """n instances of the bot on one store (a SQLite directory, or a
    PostgreSQL conninfo) and one emulator; the first starts first and so
    holds the duties (the outbox: the one sender)."""

    def __init__(self, n, store_conf, env, emu, outbox, store_dir=None):
        self.d = []
        clustered = n > 1 or "postgresql" in store_conf
        for i in range(n):
            extra = outbox
            if clustered:
                extra += "[cluster]\ninstance = %s\n" % NAMES[i]
            d = Daemon(handler(), tls=False, register=False, start=False,
                       emu=emu, env=env, store=store_dir,
                       webhook="path = %s\nsecret_token = %s\n"
                       "reply_deadline = 30s\n" % (PATH, SECRET),
                       extra=extra)
            with open(d.conf) as f:
                text = f.read()
            # the bench logs as a user's daemon does (one line an update)
            text = text.replace("[log]\nlevel = debug\n",
                                "[log]\nlevel = info\n", 1)
            text = text.replace("[store]\n", "[store]\n" + store_conf, 1)
            with open(d.conf, "w") as f:
                f.write(text)
            self.d.append(d)
        try:
            for i, d in enumerate(self.d):
                d.start(wait_register=False)
                if clustered:
                    d.wait_log("cluster: instance %s" % NAMES[i], 15)
                    if i == 0:
                        # the first holds the outbox before any load
                        d.wait_log("holds the outbox duty", 15)
        except BaseException:
            self.close()
            raise

    def pids(self):
        return [d.proc.pid for d in self.d]

    def close(self):
        bad = []
        for d in self.d:
            try:
                if d.proc is not None:
                    rc = d.stop()
                    if rc != 0:
                        bad.append("instance exited %s: %s" % (
                            rc, d.log()[-2000:]))
            finally:
                if d.proc is not None:
                    d.proc.kill()
                    d.proc.wait()
                d.tmp.cleanup()
        if bad:
            raise RuntimeError("\n".join(bad))


class Counter:
    """Counts the emulator's follow-up calls, reading only the calls new
    since the last look (a rescan of tens of thousands under the lock the
    emulator's request threads take would slow it down)."""

    def __init__(self, emu):
        self.emu, self.seen, self.count, self.last = emu, 0, 0, None

    def poll(self):
        with self.emu.cv:
            new = self.emu.calls[self.seen:]
        self.seen += len(new)
        for c in new:
            if c.method == "sendMessage" and \
                    c.params.get("text") == FOLLOWUP:
                self.count += 1
                self.last = c.time
        return self.count

    def wait(self, n, timeout):
        deadline = time.time() + timeout
        while self.poll() < n and time.time() < deadline:
            time.sleep(0.2)
        return self.count


def run_wrk(port, conns, seq):
    return subprocess.Popen(
        ["wrk", "-t1", "-c%d" % conns, "-d%ds" % DURATION, "--latency",
         "-s", os.path.join(ROOT, "bench", "cluster.lua"),
         "http://127.0.0.1:%d/%s" % (port, PATH), "--", "/" + PATH, SECRET,
         str(seq)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def wrk_result(p):
    text = p.communicate(timeout=DURATION + 60)[0]
    m = re.search(r"(\d+) requests in", text)
    if m is None:
        raise RuntimeError("wrk said:\n" + text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"requests": int(m.group(1)),
            "bad": int(re.search(r"BAD (\d+)", text).group(1)),
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "p99_us": int(re.search(r"P99 (\d+)", text).group(1))}


SEQ = [0]


def throughput(backend, n, pg, results):
    """Measurement 1 for one backend and n instances."""
    emu = botapi_emu.Emulator(TOKEN).start()
    tmp = None
    env = {}
    if backend == "postgresql":
        db = "bench_%d_%d" % (n, os.getpid())
        conninfo = pg.create_db(db)
        store_conf = "backend = postgresql\npostgresql = %s\n" % conninfo
        env["PGPASSFILE"] = pg.passfile
        store_dir = None
    else:
        import tempfile
        tmp = tempfile.TemporaryDirectory(prefix="tgw-clbench-")
        store_conf = ""
        store_dir = os.path.join(tmp.name, "store")
    outbox = "[outbox]\nrate = 1000\nchat_interval = 0\nmax_inflight = 256\n"
    inst = Instances(n, store_conf, env, emu, outbox, store_dir)
    try:
        counter = Counter(emu)
        if pg:
            pg.stats_reset(db)
        pm = pg.postmaster() if pg else None
        c0 = cpu_ticks(inst.pids())
        p0 = cpu_ticks([pm]) if pm else 0
        t0 = time.time()
        procs = []
        for i, d in enumerate(inst.d):
            SEQ[0] += 1
            conns = max(1, CONNS // n) + (1 if i < CONNS % n else 0)
            procs.append(run_wrk(d.port, conns, SEQ[0]))
        out = [wrk_result(p) for p in procs]
        t1 = time.time()
        at_t1 = counter.poll()
        good = sum(r["requests"] - r["bad"] for r in out)
        got = counter.wait(good, max(60, good / 100))
        t2 = counter.last or time.time()
        c1 = cpu_ticks(inst.pids())
        p1 = cpu_ticks([pm]) if pm else 0
    finally:
        inst.close()
        emu.stop()
        if tmp:
            tmp.cleanup()
    hz = os.sysconf("SC_CLK_TCK")
    requests = sum(r["requests"] for r in out)
    if pg:
        calls, plan, run, commits = pg.statements(db)
        stmts = {"statements": calls / max(requests, 1),
                 "commits": commits / max(requests, 1),
                 "plan_us": plan * 1000 / max(calls, 1),
                 "exec_us": run * 1000 / max(calls, 1)}
    else:
        stmts = None
    results.append({
        "backend": backend, "n": n, "requests": requests,
        "bad": sum(r["bad"] for r in out),
        "answered_s": requests / (t1 - t0),
        "delivered": got, "expected": good,
        "with_followups_s": got / (t2 - t0),
        # None: every follow-up was delivered before the load ended
        "drain_s": (got - at_t1) / (t2 - t1) if t2 > t1 + 0.5 else None,
        "p99_ms": max(r["p99_us"] for r in out) / 1000.0,
        "cpu_daemons": (c1 - c0) * 1e6 / hz / max(requests, 1),
        "cpu_db": (p1 - p0) * 1e6 / hz / max(requests, 1) if pm else None,
        "pg": stmts,
    })


def enqueue(pg):
    """Measurement 2: bench/enqueue.c on each backend; its table rows."""
    prog = os.path.join(BUILD, "bench", "enqueue")
    rows = []
    for argv, env in (([prog], None),
                      ([prog, "--postgresql",
                        pg.create_db("bench_enqueue_%d" % os.getpid())],
                       dict(os.environ, PGPASSFILE=pg.passfile))):
        out = subprocess.run(argv, capture_output=True, text=True, env=env,
                             timeout=600)
        if out.returncode != 0:
            raise RuntimeError("%s: %s" % (" ".join(argv[:2]), out.stderr))
        rows += [line for line in out.stdout.splitlines()
                 if line.startswith("| ") and not line.startswith(
                     ("| store", "|---"))]
    return rows


def post_all(ports, n):
    """Measurement 3's load: n updates from n chats, round-robin over
    the instances, each over its own kept-alive connection, one thread
    per instance; the count of answers that were not the inline one."""
    bad = [0]
    lock = threading.Lock()

    def send(k, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(k, n, len(ports)):
            body = json.dumps(message("/start", 1 + i, chat_id=500000 + i,
                                      user_id=500000 + i)).encode()
            conn.request("POST", "/" + PATH, body=body, headers={
                "Content-Type": "application/json",
                "X-Telegram-Bot-Api-Secret-Token": SECRET})
            r = conn.getresponse()
            data = r.read()
            if r.status != 200 or b'"sendMessage"' not in data:
                with lock:
                    bad[0] += 1
        conn.close()
    ts = [threading.Thread(target=send, args=(k, p))
          for k, p in enumerate(ports)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return bad[0]


def limits(pg):
    """Measurement 3 on PostgreSQL: the emulator's accepted sends (a
    call it answered 429 is not one) and their pace."""
    emu = botapi_emu.Emulator(TOKEN).start()
    emu.enforce_limits = True
    conninfo = pg.create_db("bench_limits_%d" % os.getpid())
    inst = Instances(3, "backend = postgresql\npostgresql = %s\n" % conninfo,
                     {"PGPASSFILE": pg.passfile}, emu, "")
    try:
        t0 = time.time()
        bad = post_all([d.port for d in inst.d], N)
        posted = time.time() - t0
        deadline = time.time() + N / 30.0 + 60
        while time.time() < deadline:
            with emu.cv:
                if len(emu.sends) >= N:
                    break
            time.sleep(0.2)
        with emu.cv:
            sends = [t for t, _ in emu.sends]
            violations = emu.violations
        senders = [NAMES[i] for i, d in enumerate(inst.d)
                   if "holds the outbox duty now" in d.log()]
    finally:
        inst.close()
        emu.stop()
    got = len(sends)
    return {"posted": posted, "bad": bad, "delivered": got,
            "took": (sends[-1] - t0) if sends else 0,
            "first": (sends[0] - t0) if sends else 0,
            "pace_ms": (sends[-1] - sends[0]) * 1000 / (got - 1)
            if got > 1 else 0,
            "violations": violations, "senders": senders}


def tables(tp, enq, lim):
    lines = ["Webhook updates with follow-ups (`bench/handlers/followup.c`: "
             "an inline answer and one follow-up per update; %d connections "
             "in all, %d s of wrk per run, the outbox at 1,000/s):" % (
                 CONNS, DURATION), "",
             "| store | instances | updates | answered/s | × SQLite, 1 | "
             "p99 ms | bad | follow-ups delivered/s | after the load | "
             "CPU µs/update, daemons | database server | both, "
             "× SQLite, 1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = [r for r in tp if r["backend"] == "sqlite" and r["n"] == 1]
    base = base[0] if base else None

    def ratio(a, b):
        return "%.2f" % (a / b) if b else "-"
    for r in tp:
        total = r["cpu_daemons"] + (r["cpu_db"] or 0)
        lines.append(
            "| %s | %d | %d | %.0f | %s | %.1f | %d | %.0f%s | %s | %.0f "
            "| %s | %s |" % (
                r["backend"], r["n"], r["requests"], r["answered_s"],
                ratio(r["answered_s"], base and base["answered_s"]),
                r["p99_ms"], r["bad"], r["with_followups_s"],
                "" if r["delivered"] >= r["expected"] else
                " (%d of %d follow-ups)" % (r["delivered"], r["expected"]),
                "%.0f" % r["drain_s"] if r["drain_s"] is not None else "-",
                r["cpu_daemons"],
                "%.0f" % r["cpu_db"] if r["cpu_db"] is not None else "-",
                ratio(total, base and base["cpu_daemons"])))
    pgs = [r for r in tp if r["pg"]]
    if pgs:
        lines += ["", "What the PostgreSQL runs asked of the server, per "
                  "update (`pg_stat_statements`, `pg_stat_database`):", "",
                  "| instances | statements | commits | planning µs a "
                  "statement | executing µs a statement |",
                  "|---|---|---|---|---|"]
        for r in pgs:
            lines.append("| %d | %.1f | %.1f | %.0f | %.0f |" % (
                r["n"], r["pg"]["statements"], r["pg"]["commits"],
                r["pg"]["plan_us"], r["pg"]["exec_us"]))
    lines += ["", "One queued call (`bench/enqueue.c`, `store_calls_add()` "
              "through store.h):", "",
              "| store | sync | calls per transaction | µs per call |",
              "|---|---|---|---|"] + enq
    if lim:
        lines += ["", "%d messages to %d chats through three instances on "
                  "PostgreSQL, the emulator enforcing Telegram's limits "
                  "(updates round-robin over a, b, c; each answered inline "
                  "with one follow-up):" % (N, N), "",
                  "| updates posted in | follow-ups delivered | the last "
                  "after | floor at 30/s | target | the first after | "
                  "then one every | 429s | bad answers | sender |",
                  "|---|---|---|---|---|---|---|---|---|---|",
                  "| %.1f s | %d of %d | %.1f s | %.1f s | 34 s | %.2f s | "
                  "%.2f ms | %d | %d | %s |" % (
                      lim["posted"], lim["delivered"], N, lim["took"],
                      N / 30.0, lim["first"], lim["pace_ms"],
                      lim["violations"], lim["bad"],
                      ", ".join(lim["senders"]) or "?")]
    return lines


def write_results(lines):
    """Replaces (or adds) this bench's section of RESULTS.md."""
    head = [SECTION, "", "`bench/cluster_bench.py` on %s, %d cores, %s; "
            "PostgreSQL %s with fsync on (its default) and "
            "pg_stat_statements loaded, on a unix socket; "
            "everything (instances, server, wrk, the emulator in Python) on "
            "the same cores, unpinned." % (
                platform.node() or "this machine", os.cpu_count(),
                time.strftime("%Y-%m-%d"), pg_version()), ""]
    try:
        with open(RESULTS) as f:
            old = f.read()
    except FileNotFoundError:
        old = "# Benchmark results\n"
    at = old.find(SECTION)
    if at == -1:
        text = old.rstrip("\n") + "\n\n"
        rest = ""
    else:
        nxt = old.find("\n## ", at + len(SECTION))
        text = old[:at]
        rest = old[nxt + 1:] if nxt != -1 else ""
    text += "\n".join(head + lines) + "\n"
    if rest:
        text += "\n" + rest
    with open(RESULTS, "w") as f:
        f.write(text)


def pg_version():
    out = subprocess.run([os.path.join(pgserver.BIN, "postgres"),
                          "--version"], capture_output=True, text=True)
    m = re.search(r"\d+\.\d+", out.stdout)
    return m.group(0) if m else "?"


def main():
    why = pgserver.available()
    if why is None and shutil.which("wrk") is None:
        why = "no wrk (apt-get install wrk; make bench installs it)"
    if why is not None:
        print("cluster_bench: skipped: %s" % why)
        return
    pg = PgServer().init()
    try:
        pg.start().setup()
        tp = []
        for backend in ("sqlite", "postgresql"):
            for n in (1, 3):
                throughput(backend, n, pg if backend == "postgresql" else
                           None, tp)
        enq = enqueue(pg)
        lim = limits(pg)
    finally:
        pg.destroy()
    lines = tables(tp, enq, lim)
    print("\n".join(lines))
    write_results(lines)


if __name__ == "__main__":
    main()
