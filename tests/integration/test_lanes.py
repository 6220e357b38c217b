"""The outbox's lanes, fairness and bounds, against the emulator that
enforces Telegram's limits: a conversation and a late answerCallbackQuery
do not wait behind a broadcast, method names are case-insensitive in
pacing, paid broadcasts go at paid_rate, the bounds answer explicitly,
and a store made before lanes is migrated with its pending calls."""

import json
import os
import sqlite3
import subprocess
import time

from harness import Daemon, binary, callback, eventually, message, rows


def run(d, *args):
    return subprocess.run([binary(), "-c", d.conf] + list(args),
                          capture_output=True, env=d.env, timeout=30,
                          text=True)


def script(d, name, body):
    path = os.path.join(d.dir, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\ncat >/dev/null\n" + body)
    os.chmod(path, 0o700)
    return path


def lanes_daemon(outbox="", webhook="reply_deadline = 300ms"):
    """/cmd: an inline reply and one follow-up; a callback: a late
    answerCallbackQuery (after reply_deadline, so through the outbox)."""
    d = Daemon("", webhook=webhook, extra="[outbox]\n" + outbox,
               start=False)
    talk = script(d, "talk", "printf '{\"method\":\"sendMessage\",\"chat_id\":"
                  "%s,\"text\":\"now\"}{\"method\":\"sendMessage\",\"chat_id\":"
                  "%s,\"text\":\"follow-up\"}' \"$TGW_CHAT_ID\" "
                  "\"$TGW_CHAT_ID\"\n")
    late = script(d, "late", "sleep 0.6\nprintf '{\"method\":"
                  "\"answerCallbackQuery\",\"callback_query_id\":\"cq%s\"}' "
                  "\"$TGW_UPDATE_ID\"\n")
    with open(d.conf, "a") as f:
        f.write("[handler.late]\nupdates = callback_query\nexec = %s\n"
                "[handler.talk]\nupdates = message\nexec = %s\n"
                % (late, talk))
    d.start()
    d.emu.enforce_limits = True
    return d


def first_time(d, method, pred):
    def probe():
        for c in d.emu.calls_of(method):
            if pred(c):
                return c.time
        return None
    return eventually(probe, timeout=15)


def test_conversation_and_deadline_not_behind_a_broadcast():
    """3,000 broadcast calls queued first (100 s of work at 30/s): a new
    conversation's follow-up and a late answerCallbackQuery go out at
    once; the broadcast goes on at the rate, with no 429."""
    with lanes_daemon() as d:
        path = os.path.join(d.dir, "ids")
        with open(path, "w") as f:
            f.write("".join("%d\n" % (10000 + i) for i in range(3000)))
        out = run(d, "--broadcast", path, "--text", "news")
        assert out.returncode == 0, out
        assert "bulk lane" in out.stdout, out.stdout
        d.emu.wait_calls("sendMessage", 30, timeout=10)
        t0 = time.time()
        status, _, _, body = d.deliver(message("hi", 1, chat_id=7))
        assert status == 200 and json.loads(body)["text"] == "now"
        t = first_time(d, "sendMessage", lambda c: c.params.get("text") ==
                       "follow-up")
        assert t is not None and t - t0 < 5, t and t - t0
        t0 = time.time()
        status, _, _, _ = d.deliver(callback("b", 2, chat_id=8))
        assert status == 200
        t = first_time(d, "answerCallbackQuery", lambda c: True)
        # the handler takes 0.6 s; its answer goes at once after (behind
        # the broadcast, it would be 100 s; make bench measures the time)
        assert t is not None and t - t0 < 5, t and t - t0
        assert d.emu.violations == 0
        out = run(d, "--outbox")
        assert out.returncode == 0
        assert "lanes (pending, oldest):" in out.stdout, out.stdout
        assert "broadcasts: 1" in out.stdout, out.stdout
        assert "  bulk " in out.stdout


def test_method_names_case_insensitive_in_pacing():
    """SendMessage is sendMessage: paced a second apart per chat, so the
    emulator, which lowercases as Telegram does, sees no 429.  (The first
    call is the inline answer; the three others follow.)"""
    d = Daemon("", start=False)
    body = "".join("printf '{\"method\":\"%s\",\"chat_id\":%%s,\"text\":"
                   "\"%d\"}' \"$TGW_CHAT_ID\"\n" % (m, i) for i, m in
                   enumerate(["SendMessage", "SENDMESSAGE", "sendmessage",
                              "SendMessage"]))
    path = script(d, "shout", body)
    with open(d.conf, "a") as f:
        f.write("[handler.shout]\nexec = %s\n" % path)
    with d:
        d.start()
        d.emu.enforce_limits = True
        d.deliver(message("x", 1, chat_id=9))
        def sent():
            got = [c for c in d.emu.calls if c.method.lower() ==
                   "sendmessage" and c.params.get("chat_id") == 9]
            return got if len(got) >= 3 else None
        got = eventually(sent, timeout=15)
        assert d.emu.violations == 0
        assert [c.method for c in got] == ["SENDMESSAGE", "sendmessage",
                                           "SendMessage"]
        times = [c.time for c in got]
        assert all(b - a >= 0.95 for a, b in zip(times, times[1:])), times


def test_paid_broadcast_at_paid_rate():
    """300 calls with allow_paid_broadcast at paid_rate = 200/s: a couple
    of seconds, not the 10 s of the free 30 a second; no 429."""
    d = Daemon("[handler.none]\ncommands = /none\nreply = x\n",
               extra="[outbox]\npaid_rate = 200/s\nmax_inflight = 64\n")
    with d:
        d.emu.enforce_limits = True
        path = os.path.join(d.dir, "paid.jsonl")
        with open(path, "w") as f:
            for i in range(300):
                f.write(json.dumps({"method": "sendMessage",
                                    "chat_id": 5000 + i, "text": "p",
                                    "allow_paid_broadcast": True}) + "\n")
        t0 = time.time()
        out = run(d, "--broadcast", path)
        assert out.returncode == 0, out
        d.emu.wait_calls("sendMessage", 300, timeout=20)
        took = time.time() - t0
        assert took < 8, took   # at the free 30 a second: 10 s
        assert d.emu.violations == 0
        assert eventually(lambda: len(rows(d, "lane = 3 AND state = 1")) ==
                          300), rows(d, "lane = 3 AND state <> 1")


def test_bounds_answer_explicitly():
    """Calls past max_calls_per_update: dead letters naming the limit.  A
    broadcast over max_pending: refused whole, saying how many fit.  The
    outbox at max_pending: webhooks answered 503 with Retry-After."""
    d = lanes_daemon(outbox="max_calls_per_update = 1\nmax_pending = 100\n",
                     webhook="")
    with d:
        status, _, _, body = d.deliver(message("hi", 1, chat_id=7))
        assert status == 200 and json.loads(body)["text"] == "now"
        dead = eventually(lambda: rows(d, "state = 2"))
        assert dead and "call 2 of 2 of update 1 is over [outbox] " \
            "max_calls_per_update (1)" in dead[0][4], dead
        d.wait_log("1 call(s) over [outbox] max_calls_per_update (1) kept "
                   "as dead letters")
        path = os.path.join(d.dir, "ids")
        with open(path, "w") as f:
            f.write("".join("%d\n" % (10000 + i) for i in range(150)))
        out = run(d, "--broadcast", path, "--text", "news", "--over", "1h")
        assert out.returncode == 1, out
        assert "its 150 call(s) would take the outbox over [outbox] " \
            "max_pending (100): 0 call(s) are pending, so 100 more fit" in \
            out.stderr, out.stderr
        assert rows(d, "state = 0") == []
        with open(path, "w") as f:
            f.write("".join("%d\n" % (10000 + i) for i in range(100)))
        # the first call is due at once: the Bot API hangs, so that it
        # stays pending (retried) and the outbox holds all 100
        d.emu.script("sendMessage", *["hang"] * 3)
        out = run(d, "--broadcast", path, "--text", "news", "--over", "1h")
        assert out.returncode == 0, out

        ids = iter(range(3, 1000))

        def refused():
            # a new update_id each time: a seen one is not handled again
            status, _, headers, _ = d.deliver(message("hi", next(ids),
                                                      chat_id=8))
            return status == 503 and headers
        headers = eventually(refused, timeout=10)
        assert headers, "never 503"
        assert "retry-after" in {k.lower() for k in headers}, headers
        d.wait_log("the outbox holds 100 pending call(s), [outbox] "
                   "max_pending is 100")


def test_store_before_lanes_migrated():
    """A store of the schema before lanes, with pending calls: at start
    each gets its lane and all are delivered."""
    d = Daemon("[handler.none]\ncommands = /none\nreply = x\n", start=False)
    with d:
        os.makedirs(d.store, mode=0o700, exist_ok=True)
        db = sqlite3.connect(os.path.join(d.store, "tgwebhookd.db"))
        db.executescript(
            "CREATE TABLE calls (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " key TEXT UNIQUE, method TEXT NOT NULL, chat TEXT,"
            " params TEXT NOT NULL, state INTEGER NOT NULL DEFAULT 0,"
            " attempts INTEGER NOT NULL DEFAULT 0,"
            " created INTEGER NOT NULL, not_before INTEGER NOT NULL,"
            " finished INTEGER, last_error TEXT);"
            "CREATE INDEX calls_state ON calls(state, id);")
        now = int(time.time() * 1000)
        db.executemany(
            "INSERT INTO calls(key, method, chat, params, created, "
            "not_before) VALUES (?, ?, ?, ?, ?, ?)",
            [("b:00112233445566aa:1", "sendMessage", "21",
              '{"chat_id":21,"text":"old broadcast"}', now, now),
             ("u:9:1", "sendMessage", "22",
              '{"chat_id":22,"text":"old follow-up"}', now, now),
             ("u:9:2", "answerCallbackQuery", None,
              '{"callback_query_id":"q9"}', now, now)])
        db.commit()
        db.close()
        os.chmod(os.path.join(d.store, "tgwebhookd.db"), 0o600)
        d.start()
        d.emu.wait_calls("sendMessage", 2, timeout=10)
        d.emu.wait_calls("answerCallbackQuery", 1, timeout=10)
        done = eventually(lambda: len(rows(d, "state = 1")) == 3)
        assert done, rows(d)
        db = sqlite3.connect(os.path.join(d.store, "tgwebhookd.db"))
        lanes = db.execute("SELECT key, lane FROM calls ORDER BY id"
                           ).fetchall()
        db.close()
        assert lanes == [("b:00112233445566aa:1", 2), ("u:9:1", 1),
                         ("u:9:2", 0)], lanes
