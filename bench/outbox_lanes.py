"""bench/outbox_lanes.py: does a live conversation wait behind a backlog?

Three backlogs, each on its own, against the emulator enforcing Telegram's
limits: N broadcast calls (--broadcast, no --over), N spread over 8 h
(--over 8h), and N/2 calls pending to one chat (rows of the conversation
lane, as a busy chat's handler would leave them).  With each, a message
to the bot (its handler answers inline and queues one follow-up) and a
callback whose handler is late (past reply_deadline, so its
answerCallbackQuery goes through the outbox): how long from the update
(or the late handler's end) to the Bot API receiving the call.  Then the
first broadcast's finish against N / rate, and the 429s.  A measurement,
not a test: N = 20000 takes N/30 s (11 min) for the first backlog.
"""

import json
import os
import sqlite3
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from harness import Daemon, binary, callback, message  # noqa: E402

N = int(os.environ.get("N", "20000"))
RATE = 30


def script(d, name, body):
    path = os.path.join(d.dir, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\ncat >/dev/null\n" + body)
    os.chmod(path, 0o700)
    return path


def daemon():
    d = Daemon("", webhook="reply_deadline = 300ms",
               extra="[outbox]\nmax_pending = 1000000\n", start=False)
    talk = script(d, "talk", "printf '{\"method\":\"sendMessage\",\"chat_id\":"
                  "%s,\"text\":\"now\"}{\"method\":\"sendMessage\",\"chat_id\":"
                  "%s,\"text\":\"follow-up %s\"}' \"$TGW_CHAT_ID\" "
                  "\"$TGW_CHAT_ID\" \"$TGW_UPDATE_ID\"\n")
    late = script(d, "late", "sleep 0.6\ndate +%%s.%%N > %s/late-$TGW_UPDATE_ID"
                  "\nprintf '{\"method\":\"answerCallbackQuery\","
                  "\"callback_query_id\":\"cq%%s\"}' \"$TGW_UPDATE_ID\"\n"
                  % d.dir)
    with open(d.conf, "a") as f:
        f.write("[handler.late]\nupdates = callback_query\nexec = %s\n"
                "[handler.talk]\nupdates = message\nexec = %s\n"
                % (late, talk))
    d.start()
    d.emu.enforce_limits = True
    return d


def arrival(d, method, pred, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with d.emu.cv:
            for c in reversed(d.emu.calls):
                if c.method == method and pred(c):
                    return c.time
        time.sleep(0.01)
    return None


def news(d, n, timeout):
    """Arrival times of the n broadcast calls.  It reads only the calls
    new since its last look, a second apart: the emulator's wait_calls
    scans every call at every arrival while holding the lock its request
    threads need, which at 20,000 calls delays them enough to bunch up
    arrivals and turn them into 429s that the sender did not cause."""
    deadline = time.time() + timeout
    seen, times = 0, []
    while len(times) < n and time.time() < deadline:
        time.sleep(1)
        with d.emu.cv:
            new = d.emu.calls[seen:]
        seen += len(new)
        times += [c.time for c in new if c.method == "sendMessage" and
                  c.params.get("text") == "news"]
    assert len(times) >= n, (len(times), n)
    return times


def probe(d, uid):
    """Latency of a follow-up from its update, and of a late handler's
    answerCallbackQuery from the handler's end (seconds)."""
    t0 = time.time()
    status, _, _, _ = d.deliver(message("hi", uid, chat_id=7 + uid))
    assert status == 200, status
    t = arrival(d, "sendMessage", lambda c: c.params.get("text") ==
                "follow-up %d" % uid)
    follow = t - t0 if t else float("inf")
    status, _, _, _ = d.deliver(callback("b", uid + 1, chat_id=8 + uid))
    assert status == 200, status
    t = arrival(d, "answerCallbackQuery", lambda c: c.params.get(
        "callback_query_id") == "cq%d" % (uid + 1))
    with open(os.path.join(d.dir, "late-%d" % (uid + 1))) as f:
        done = float(f.read())
    answer = t - done if t else float("inf")
    return follow, answer


def broadcast(d, over=None):
    path = os.path.join(d.dir, "ids")
    with open(path, "w") as f:
        f.write("".join("%d\n" % (100000 + i) for i in range(N)))
    args = [binary(), "-c", d.conf, "--broadcast", path, "--text", "news"]
    if over:
        args += ["--over", over]
    t0 = time.time()
    out = subprocess.run(args, capture_output=True, text=True, env=d.env)
    assert out.returncode == 0, out
    return t0


def one_chat(d, n):
    db = sqlite3.connect(os.path.join(d.store, "tgwebhookd.db"))
    now = int(time.time() * 1000)
    db.executemany("INSERT INTO calls(key, method, chat, params, created, "
                   "not_before, lane) VALUES (?, 'sendMessage', '77', ?, ?, "
                   "?, 1)", [("u:1:%d" % i, json.dumps(
                       {"chat_id": 77, "text": "busy %d" % i}), now, now)
                             for i in range(n)])
    db.commit()
    db.close()


def row(name, f, a, extra, n429):
    print("| %s | %.3f s | %.3f s | %s | %d |" % (name, f, a, extra, n429))


def main():
    print("| backlog | follow-up after its update | late answerCallbackQuery "
          "after its handler | broadcast | 429s |")
    print("|---|---|---|---|---|")
    violations = 0

    with daemon() as d:
        t0 = broadcast(d)
        d.emu.wait_calls("sendMessage", 60, timeout=30)
        f, a = probe(d, 1000)
        bc = news(d, N, N / RATE * 1.2 + 60)
        took = max(bc) - t0
        steady = (max(bc) - min(bc)) / (len(bc) - 1)
        row("%d broadcast calls" % N, f, a, "finished %.1f s after "
            "--broadcast = %.3f x N/rate (%.1f s); one every %.2f ms "
            "(1/rate: %.2f ms)" % (took, took / (N / RATE), N / RATE,
                                   steady * 1000, 1000.0 / RATE),
            d.emu.violations)
        violations += d.emu.violations

    with daemon() as d:
        broadcast(d, "8h")
        time.sleep(2)
        f, a = probe(d, 1000)
        row("%d broadcast calls over 8h" % N, f, a, "(spread: not waited "
            "for)", d.emu.violations)
        violations += d.emu.violations

    with daemon() as d:
        one_chat(d, N // 2)
        d.emu.wait_calls("sendMessage", 2, timeout=30)
        f, a = probe(d, 1000)
        row("%d calls pending to one chat" % (N // 2), f, a, "(one a second: "
            "not waited for)", d.emu.violations)
        violations += d.emu.violations
    print()
    print("429s from the emulator: %d" % violations)


if __name__ == "__main__":
    main()
