"""make bench: the same webhook load against nginx (the ceiling for a TLS
HTTP server here) and tgwebhookd with each handler kind giving the same
answer (reply, plugin, worker, exec: bench/handlers/), side by side, in
one run.  BENCH_KINDS=reply,plugin picks kinds; BENCH_CONNS and
BENCH_SECONDS shape the runs; BENCH_ENV adds to the daemons' environment.

wrk (bench/webhook.lua) POSTs a private /start update with a fresh
update_id to the secret path over TLS keep-alive, at 1, 10 and 100
connections; every answer is checked (a 200 carrying the inline
sendMessage).  The server is pinned to core 0, wrk to core 1.  Figures:
requests a second, p50/p99 latency, bad answers, server CPU time per
update (from the server's own accounting, its handler processes
included: steadier than req/s on a shared machine), peak RSS, and each one's ratio to nginx's.  Written to
bench/RESULTS.md.  A measurement, not a test."""

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))
from botapi_emu import Emulator, free_port  # noqa: E402
BUILD = os.path.abspath(os.environ.get("TGW_BUILD",
                                       os.path.join(ROOT, "build")))
DURATION = int(os.environ.get("BENCH_SECONDS", "8"))
CONNS = [int(c) for c in os.environ.get("BENCH_CONNS", "1,10,100").split(",")]
# BENCH_ENV="K=V ...": added to each tgwebhookd's environment (what a
# unit's Environment= lines would set)
DAEMON_ENV = dict(kv.split("=", 1) for kv in
                  os.environ.get("BENCH_ENV", "").split() if "=" in kv)
PATH = "/hook-Vq3kZ8pL2mW9xR4tY7uB1nE6"
SECRET = "s3cret_T0ken-for-the-benchmark"
REPLY = {"method": "sendMessage", "chat_id": 31337,
         "text": "Hello, Ann! I am a bot that says hello."}
TOKEN = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"




def process_tree(pid):
    """pid and its live descendants (a worker handler's processes)."""
    pids = [pid]
    for p in pids:
        try:
            for task in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, task)) as f:
                    pids += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return pids


def cpu_ticks(pids):
    """CPU of pids and of their live descendants, and of the children
    they have reaped (exec handlers): utime + stime + cutime + cstime."""
    total = 0
    for top in pids:
        for pid in process_tree(top):
            try:
                with open("/proc/%d/stat" % pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(x) for x in fields[11:15])
    return total


def peak_rss_kib(pids):
    """Peak RSS of pids and their live descendants (an exec handler's
    short-lived processes are not counted)."""
    total = 0
    for top in pids:
        for pid in process_tree(top):
            try:
                with open("/proc/%d/status" % pid) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            total += int(line.split()[1])
            except OSError:
                pass
    return total


def private_kib(pids):
    """The private memory of pids and their live descendants, from
    /proc/PID/smaps_rollup: Private_Dirty and Anonymous (anonymous pages
    once written are private dirty too, so the larger of the two is their
    union; shared libraries' clean pages are not counted)."""
    total = 0
    for top in pids:
        for pid in process_tree(top):
            fields = {}
            try:
                with open("/proc/%d/smaps_rollup" % pid) as f:
                    for line in f:
                        parts = line.split()
                        if len(parts) == 3 and parts[2] == "kB":
                            fields[parts[0].rstrip(":")] = int(parts[1])
            except OSError:
                continue
            total += max(fields.get("Private_Dirty", 0),
                         fields.get("Anonymous", 0))
    return total


class MemorySampler:
    """Samples private_kib(pids) while a run goes: its peak, taken with
    the run's connections open (after the run they are closed)."""

    def __init__(self, pids):
        import threading
        self.pids, self.peak = pids, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.done.wait(0.5):
            self.peak = max(self.peak, private_kib(self.pids))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def wait_port(port, timeout=10):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on %d" % port)


RUNS = [0]


def run_wrk(port, conns, expect="inline", connection="keep-alive"):
    RUNS[0] += 1
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", "-c%d" % conns,
         "-d%ds" % DURATION, "--latency", "-s",
         os.path.join(ROOT, "bench", "webhook.lua"),
         "https://127.0.0.1:%d%s" % (port, PATH), "--", PATH, SECRET,
         "200" if expect == "200" else "inline", connection,
         str(RUNS[0])],
        capture_output=True, text=True, timeout=DURATION + 60)
    text = out.stdout
    reqs = int(re.search(r"(\d+) requests in", text).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    bad = int(re.search(r"BAD (\d+)", text).group(1))
    return {"requests": reqs, "rps": rps,
            "p50_us": int(re.search(r"P50 (\d+)", text).group(1)),
            "p99_us": int(re.search(r"P99 (\d+)", text).group(1)),
            "bad": bad + (int(non2xx.group(1)) if non2xx else 0),
            "socket_errors": errors.group(1) if errors else ""}


def measure(name, pids, port, results, expect="inline", conns_list=None,
            connection="keep-alive"):
    for conns in conns_list or CONNS:
        t0 = cpu_ticks(pids)
        with MemorySampler(pids) as mem:
            r = run_wrk(port, conns, expect, connection)
        ticks = cpu_ticks(pids) - t0
        r["cpu_us"] = ticks * 1e6 / os.sysconf("SC_CLK_TCK") / max(
            r["requests"], 1)
        r["rss_mib"] = peak_rss_kib(pids) / 1024.0
        r["private_mib"] = mem.peak / 1024.0
        results[(name, conns)] = r
        print("  %-18s c=%-3d %9.0f req/s  p50 %6d us  p99 %6d us  "
              "cpu %6.1f us/update  rss %5.1f MiB  private %4.1f MiB  "
              "bad %d %s" % (
                  name, conns, r["rps"], r["p50_us"], r["p99_us"],
                  r["cpu_us"], r["rss_mib"], r["private_mib"], r["bad"],
                  r["socket_errors"]), flush=True)


EMU = []


def botapi_url():
    """The Bot API the daemons' follow-ups go to: the project's emulator,
    started once.  An answer whose connection wrk closes at the end of a
    run becomes a follow-up; with no Bot API to take it, it stayed
    pending, and while a call is pending every update asks the store
    whether its chat has one (a SQLite query as costly as the parse),
    so the runs after the first measured that query too."""
    if not EMU:
        EMU.append(Emulator(TOKEN, "BenchBot").start())
    return EMU[0].url


def start_tgwebhookd(tmp, cert, key, port, handler, wrap=None, env=None,
                     timeout=10):
    """The daemon on core 0, or under wrap (an argv prefix: valgrind for
    request_cost.py) with env added to its environment.
    A store of its own: an inline answer a closed connection could not
    take becomes a follow-up (to the emulator), and a later server
    sharing the store would find its chat behind it until it is sent."""
    store = tempfile.mkdtemp(prefix="store-", dir=tmp)
    conf = os.path.join(tmp, "tgwebhookd.conf")
    with open(conf, "w") as f:
        f.write("[bot]\napi_url = %s\nusername = BenchBot\n"
                "[webhook]\ndomain = localhost\nlisten = 127.0.0.1:%d\n"
                "path = %s\nsecret_token = %s\ncertificate = %s\n"
                "private_key = %s\nself_signed = off\nregister = off\n"
                "trusted_networks = 127.0.0.0/8\n"
                "reply_deadline = 30s\n"
                "[admin]\nlisten = off\n"
                "[store]\ndir = %s\n[log]\nlevel = %s\n%s\n" % (
                    botapi_url(), port, PATH[1:], SECRET, cert, key, store,
                    os.environ.get("BENCH_LOG_LEVEL", "info"), handler))
    log = open(os.path.join(tmp, "tgwebhookd.log"), "wb")
    p = subprocess.Popen((wrap or ["taskset", "-c", "0"]) +
                         [os.path.join(BUILD, "tgwebhookd"), "-c", conf],
                         stdout=log, stderr=log,
                         env=dict(os.environ, TGWEBHOOKD_TOKEN=TOKEN,
                                  **dict(DAEMON_ENV, **(env or {}))))
    wait_port(port, timeout)
    return p


def start_nginx(tmp, cert, key, port):
    conf = os.path.join(tmp, "nginx.conf")
    body = json.dumps(REPLY).replace("'", "\\'")
    with open(conf, "w") as f:
        f.write("""worker_processes 1;
daemon off;
master_process off;
pid %s/nginx.pid;
error_log %s/nginx.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_body_temp_path %s;
    server {
        listen 127.0.0.1:%d ssl;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols TLSv1.2 TLSv1.3;
        location = %s {
            default_type application/json;
            return 200 '%s';
        }
    }
}
""" % (tmp, tmp, tmp, port, cert, key, PATH, body))
    p = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", conf,
                          "-p", tmp], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wait_port(port)
    return p


def start_floor(tmp, cert, key, port):
    """libmicrohttpd over GnuTLS answering the fixed reply (mhd_floor.c)."""
    p = subprocess.Popen(["taskset", "-c", "0",
                          os.path.join(BUILD, "bench", "mhd_floor"),
                          str(port), cert, key])
    wait_port(port)
    return p


def start_peer(tmp, cert, key, port, argv):
    """A framework's webhook server (bench/peers/), on core 0."""
    log = open(os.path.join(tmp, "peer.log"), "wb")
    p = subprocess.Popen(["taskset", "-c", "0"] + argv +
                         [str(port), cert, key, PATH, SECRET],
                         stdout=log, stderr=log,
                         cwd=os.path.join(ROOT, "bench", "peers"))
    wait_port(port, 30)
    return p


def peers(tmp, cert, key):
    """(name, start, expect) of each framework installed; the others are
    named as skipped."""
    found = []
    here = os.path.join(ROOT, "bench", "peers")
    for name, script in (("grammY", "grammy.js"), ("Telegraf", "telegraf.js")):
        if shutil.which("node") and os.path.isdir(os.path.join(
                here, "node_modules", name.lower())):
            found.append((name, lambda port, s=script: start_peer(
                tmp, cert, key, port, ["node", s]), "inline"))
        else:
            print("  %s skipped: not installed (make bench installs it)"
                  % name)
    ptb = subprocess.run(["/usr/bin/python3", "-c", "import telegram"],
                         capture_output=True)
    if ptb.returncode == 0:
        found.append(("python-telegram-bot 13", lambda port: start_peer(
            tmp, cert, key, port, ["/usr/bin/python3", "ptb13.py"]), "200"))
    else:
        print("  python-telegram-bot skipped: python3-python-telegram-bot "
              "is not installed")
    return found


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except OSError:
        return "not installed"


def self_signed(tmp):
    """A certificate for localhost and its key, in tmp: their paths."""
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "30",
                    "-subj", "/CN=localhost"], check=True,
                   capture_output=True)
    return cert, key


def main():
    for tool in ("wrk", "nginx", "taskset", "openssl"):
        if shutil.which(tool) is None:
            sys.exit("bench: %s is missing (make bench installs it)" % tool)
    tmp = tempfile.mkdtemp(prefix="tgw-bench-")
    cert, key = self_signed(tmp)
    results = {}
    # A file written moments ago (the binaries make just built) is dirty
    # in the page cache until written back, and smaps counts its mapped
    # pages as Private_Dirty: up to 0.4 MiB of tgwebhookd's own text in
    # its private memory.  Written back first.
    os.sync()
    # The same answer from each handler kind (bench/handlers/).
    handlers = os.path.join(ROOT, "bench", "handlers")
    kinds = {
        "reply": "reply = Hello, {from.first_name}! I am a bot that says "
                 "hello.",
        "plugin": "plugin = %s" % os.path.join(BUILD, "bench", "hello.so"),
        "worker": "worker = %s" % os.path.join(handlers, "hello-worker"),
        "exec": "exec = %s" % os.path.join(handlers, "hello-exec"),
    }
    wanted = os.environ.get("BENCH_KINDS", "reply,plugin,worker,exec")
    servers = [("nginx", lambda port: start_nginx(tmp, cert, key, port),
                "inline"),
               ("libmicrohttpd floor", lambda port: start_floor(
                   tmp, cert, key, port), "inline")]
    for kind in wanted.split(","):
        handler = "[handler.start]\ncommands = /start\n%s\n" % kinds[kind]
        servers.append(("tgwebhookd " + kind,
                        lambda port, h=handler: start_tgwebhookd(
                            tmp, cert, key, port, h), "inline"))
    if os.environ.get("BENCH_PEERS", "1") != "0":
        servers += peers(tmp, cert, key)
    print("server on core 0, wrk on core 1, %ds per run" % DURATION)
    handshakes = {}
    for name, start, expect in servers:
        port = free_port()
        p = start(port)
        try:
            time.sleep(0.5)    # workers start
            measure(name, [p.pid], port, results, expect)
            if name in ("nginx", "tgwebhookd reply"):
                # a new TLS connection per request
                measure(name + ", new TLS connection per request", [p.pid],
                        port, handshakes, expect, [10], "close")
        finally:
            stop(p)
    write_results(results, handshakes, [name for name, _, _ in servers])
    shutil.rmtree(tmp, ignore_errors=True)


def peer_versions():
    """grammY, Telegraf, python-telegram-bot and node versions."""
    out = []
    here = os.path.join(ROOT, "bench", "peers", "node_modules")
    for name in ("grammy", "telegraf"):
        try:
            with open(os.path.join(here, name, "package.json")) as f:
                out.append("%s %s" % (name, json.load(f)["version"]))
        except OSError:
            pass
    if out:
        out.append("node " + version(["node", "--version"]))
    ptb = subprocess.run(["/usr/bin/python3", "-c", "import telegram; "
                          "print(telegram.__version__)"],
                         capture_output=True, text=True)
    if ptb.returncode == 0:
        out.append("python-telegram-bot " + ptb.stdout.strip())
    return ", ".join(out)


def write_results(results, handshakes, order):
    peers_run = peer_versions()
    lines = ["# Benchmark results", "",
             "`make bench` on %s, %d cores (%s), %s; %s; %s%s. Server "
             "pinned to core 0, wrk to core 1, %d s per run, TLS keep-alive, "
             "every answer checked (python-telegram-bot 13 cannot answer "
             "inline: a 200 is its check). CPU and RSS include a server's "
             "handler processes (the exec RSS counts the children alive at "
             "the end of a run); private memory is Private_Dirty and "
             "Anonymous from /proc/PID/smaps_rollup (the larger: their "
             "union), its peak sampled during the run. Ratios are to nginx "
             "and to the floor in the same run; "
             "\"libmicrohttpd floor\" is bench/mhd_floor.c, the HTTP and TLS "
             "stack tgwebhookd is built on answering the fixed reply with no "
             "work of its own." % (
                 platform.node() or "this machine", os.cpu_count(),
                 platform.machine(), time.strftime("%Y-%m-%d"),
                 version(["nginx", "-v"]),
                 version([os.path.join(BUILD, "tgwebhookd"), "--version"]),
                 "; " + peers_run if peers_run else "", DURATION), "",
             "| server | conns | req/s | × nginx | × floor | p50 µs | "
             "p99 µs | × floor | bad | CPU µs/update | × nginx | × floor | "
             "private MiB | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ratio(a, b):
        return "%.2f" % (a / b) if b else "-"

    for (name, conns), r in sorted(results.items(), key=lambda kv: (
            kv[0][1], order.index(kv[0][0]) if kv[0][0] in order else 99)):
        base = results.get(("nginx", conns), {})
        floor = results.get(("libmicrohttpd floor", conns), {})
        lines.append("| %s | %d | %.0f | %s | %s | %d | %d | %s | %d | %.1f | "
                     "%s | %s | %.1f | %.1f |" % (
                         name, conns, r["rps"],
                         ratio(r["rps"], base.get("rps")),
                         ratio(r["rps"], floor.get("rps")),
                         r["p50_us"], r["p99_us"],
                         ratio(r["p99_us"], floor.get("p99_us")), r["bad"],
                         r["cpu_us"], ratio(r["cpu_us"], base.get("cpu_us")),
                         ratio(r["cpu_us"], floor.get("cpu_us")),
                         r["private_mib"], r["rss_mib"]))
    lines += ["", "TLS handshakes: a new connection per request (`Connection: "
              "close`), 10 connections, RSA-2048 certificate.", "",
              "| server | handshakes/s | × nginx | p99 µs | CPU µs/handshake |"
              " × nginx |", "|---|---|---|---|---|---|"]
    base = [r for (n, _), r in handshakes.items() if n.startswith("nginx")]
    for (name, conns), r in sorted(handshakes.items()):
        b = base[0] if base else None
        lines.append("| %s | %.0f | %.2f | %d | %.1f | %.2f |" % (
            name.split(",")[0], r["rps"], r["rps"] / b["rps"] if b else 0,
            r["p99_us"], r["cpu_us"], r["cpu_us"] / b["cpu_us"] if b else 0))
    with open(os.path.join(ROOT, "bench", "RESULTS.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
