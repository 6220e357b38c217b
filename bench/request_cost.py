"""Instructions per update on the request path, counted with callgrind
(issue 16's method): the daemon (or bench/mhd_floor) under `valgrind
--tool=callgrind --separate-threads=yes`, the bench's webhook load from
wrk at one connection, the counters zeroed after a warm-up run, then the
libmicrohttpd thread's user-space instructions divided by the updates
answered.  Instruction counts are what to compare: no neighbour on a
shared machine changes them, where its CPU timings move by 2-3 x.

  python3 bench/request_cost.py [reply|plugin|floor ...]

COST_SECONDS (default 5) is the counted run; COST_TOP (default 25) the
functions listed by their own instructions; COST_KEEP=1 keeps the dumps (for callgrind_annotate --tree=calling);
COST_ENV adds environment
settings to the daemon's (for example
COST_ENV=GLIBC_TUNABLES=glibc.malloc.tcache_count=64).  libmicrohttpd's
reset of the connection's memory pool (a memset of the whole pool per
request, counted byte by byte as `rep stosb`) is given apart: the total
without it is the figure bench/README.md's tables quote.  A measurement,
not a test."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import webhook_bench as wb  # noqa: E402

SECONDS = int(os.environ.get("COST_SECONDS", "5"))
TOP = int(os.environ.get("COST_TOP", "25"))


def valgrind_argv(out):
    return ["valgrind", "--tool=callgrind", "--separate-threads=yes",
            "--callgrind-out-file=" + out + ".%p"]


def wrk(port, seconds, run):
    """One wrk run at one connection; the updates answered."""
    out = subprocess.run(
        ["wrk", "-t1", "-c1", "-d%ds" % seconds, "-s",
         os.path.join(wb.ROOT, "bench", "webhook.lua"),
         "https://127.0.0.1:%d%s" % (port, wb.PATH), "--", wb.PATH,
         wb.SECRET, "inline", "keep-alive", str(run)],
        capture_output=True, text=True, timeout=seconds + 60)
    bad = int(re.search(r"BAD (\d+)", out.stdout).group(1))
    n = int(re.search(r"(\d+) requests in", out.stdout).group(1))
    if bad:
        sys.exit("request_cost: %d bad answers of %d" % (bad, n))
    return n


def totals(path):
    with open(path) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    return 0


def annotate(path, inclusive="no"):
    """(function, own or inclusive instructions) from callgrind_annotate."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100",
                          "--auto=no", "--inclusive=" + inclusive, path],
                         capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$", line)
        if m and "PROGRAM TOTALS" not in line and "=>" not in line:
            rows.append((m.group(2), int(m.group(1).replace(",", ""))))
    return rows


def dump(pid):
    """Dumps callgrind's counters to the next part file (and zeroes them)."""
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True,
                   capture_output=True, timeout=60)


def calls_into(path, names):
    """How many times each function in names was called, from callgrind's
    call counts (callgrind_annotate --tree=caller: the callers' lines
    above each function's own line)."""
    out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100",
                          "--tree=caller", path],
                         capture_output=True, text=True).stdout
    counts, pending = dict.fromkeys(names, 0), 0
    for line in out.splitlines():
        m = re.search(r"<\s.*\(([\d,]+)x\)", line)
        if m:
            pending += int(m.group(1).replace(",", ""))
            continue
        m = re.search(r"\*\s+\S*:(\w+) \[", line)
        if m and m.group(1) in counts:
            counts[m.group(1)] += pending
        if line.strip() == "" or m:
            pending = 0
    return counts


def per_update(parts, n):
    """(function, instructions per update) from the two runs' counts,
    largest first."""
    return sorted(((fn, (v - parts[0].get(fn, 0)) / n)
                   for fn, v in parts[1].items()), key=lambda r: -r[1])


def count(name, tmp, cert, key, start):
    """Two counted runs, SECONDS and 3 x SECONDS long, each on a new
    connection: the difference of their counts over the difference of
    their updates is the cost of an update, without the connection's own
    (its TLS handshake, its close), which both runs pay once."""
    port = wb.free_port()
    out = os.path.join(tmp, "cg.%s" % name)
    p = start(port, out)
    try:
        wb.wait_port(port, 120)
        wrk(port, 3, 1)                     # warm-up: caches, the date
        subprocess.run(["callgrind_control", "-z", str(p.pid)],
                       check=True, capture_output=True, timeout=60)
        n1 = wrk(port, SECONDS, 2)
        dump(p.pid)
        n2 = wrk(port, 3 * SECONDS, 3)
        dump(p.pid)
    finally:
        wb.stop(p)
    # the parts callgrind_control -d asked for: OUT.PID.PART-THREAD (the
    # dump at exit has no part number); the busiest thread is
    # libmicrohttpd's
    runs = []
    for part in (1, 2):
        prefix = "%s.%d.%d-" % (os.path.basename(out), p.pid, part)
        runs.append(max((totals(os.path.join(tmp, f)), f)
                        for f in os.listdir(tmp) if f.startswith(prefix)))
    n = n2 - n1
    total = (runs[1][0] - runs[0][0]) / n
    own = [dict(annotate(os.path.join(tmp, f))) for _, f in runs]
    rows = per_update(own, n)
    memset = sum(v for fn, v in rows if "memset" in fn and "libc" in fn)
    print("%s: %d and %d updates; per update on the libmicrohttpd thread "
          "%.0f instructions, %.0f less libc's memset (%.0f: the pool's "
          "reset is most of it)" % (name, n1, n2, total, total - memset,
                                    memset))
    names = ("malloc", "free", "calloc", "realloc")
    c = [calls_into(os.path.join(tmp, f), names) for _, f in runs]
    print("  calls per update: " + ", ".join(
        "%s %.1f" % (k, (c[1][k] - c[0][k]) / n) for k in names))
    print("  own instructions per update, the top %d:" % TOP)
    for fn, v in rows[:TOP]:
        print("  %8.0f  %s" % (v, fn))
    incl = per_update([dict(annotate(os.path.join(tmp, f), "yes"))
                       for _, f in runs], n)
    print("  the daemon's functions (src/, bench/), inclusive:")
    seen = set()
    for fn, v in incl:
        m = re.search(r"(?:^|/)((?:src|bench)/[^:]*\.c:\S+)", fn)
        if m and v >= 50 and m.group(1) not in seen:
            seen.add(m.group(1))
            print("  %8.0f  %s" % (v, m.group(1)))
    sys.stdout.flush()


def main():
    if shutil.which("valgrind") is None or shutil.which("wrk") is None:
        sys.exit("request_cost: needs valgrind and wrk")
    tmp = tempfile.mkdtemp(prefix="tgw-cost-")
    cert, key = wb.self_signed(tmp)
    extra = dict(kv.split("=", 1) for kv in
                 os.environ.get("COST_ENV", "").split() if "=" in kv)
    extra = dict(wb.DAEMON_ENV, **extra)
    kinds = {
        "reply": "reply = Hello, {from.first_name}! I am a bot that says "
                 "hello.",
        "plugin": "plugin = %s" % os.path.join(wb.BUILD, "bench",
                                               "hello.so"),
    }

    def daemon(kind):
        def start(port, out):
            handler = "[handler.start]\ncommands = /start\n%s\n" % kinds[kind]
            return wb.start_tgwebhookd(tmp, cert, key, port, handler,
                                       valgrind_argv(out), extra, 120)
        return start

    def floor(port, out):
        return subprocess.Popen(valgrind_argv(out) + [
            os.path.join(wb.BUILD, "bench", "mhd_floor"), str(port), cert,
            key], env=dict(os.environ, **extra))

    for name in sys.argv[1:] or ["floor", "reply", "plugin"]:
        count(name, tmp, cert, key, floor if name == "floor" else
              daemon(name))
    if os.environ.get("COST_KEEP"):
        print("the dumps are in " + tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
