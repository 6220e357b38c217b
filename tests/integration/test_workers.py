"""Worker handlers: the poll example end to end, the line protocol and
its failures (crash, hang, garbage, two lines, {"error"}), restarts with
backoff, chat affinity, reload keeping unchanged pools, clean stop."""

import json
import os
import signal
import stat
import threading
import time
import urllib.request

from harness import (Daemon, ROOT, callback, dead_letters, eventually,
                     message, post_update, settle, stored_secrets)

POLL = os.path.join(ROOT, "examples", "poll-worker")

# A worker whose behaviour the message text picks.
TEST_WORKER = r'''#!/usr/bin/python3
import json, os, sys, time
for line in sys.stdin:
    u = json.loads(line)
    m = u.get("message", {})
    text = m.get("text", "")
    chat = m.get("chat", {}).get("id")
    if text == "crash":
        os._exit(3)
    if text == "hang":
        time.sleep(60)
    if text == "slow":
        print("slow: working", file=sys.stderr, flush=True)
        time.sleep(1)
    if text == "garbage":
        print("this is not json", flush=True)
        continue
    if text == "twolines":
        print("[]\n[]", flush=True)
        continue
    if text == "huge":
        print("[" + " " * (2 << 20) + "]", flush=True)
        continue
    if text == "error":
        print(json.dumps({"error": "no such user"}), flush=True)
        continue
    if text == "late":
        # its answer, then a second line a moment later (then a mark
        # beside the program, for the test to wait on)
        print(json.dumps([{"method": "sendMessage", "chat_id": chat,
                           "text": "late"}]), flush=True)
        time.sleep(0.05)
        print(json.dumps([{"method": "sendMessage", "chat_id": chat,
                           "text": "stray"}]), flush=True)
        open(sys.argv[0] + ".stray", "w").close()
        continue
    if text == "log":
        print("a line for the log", file=sys.stderr, flush=True)
    if text == "newline":
        text = "raw newline survived: %s" % ("\n" not in line[:-1])
    if text == "pid":
        text = "%d %s" % (os.getpid(), os.environ.get("TGW_WORKER"))
    print(json.dumps([{"method": "sendMessage", "chat_id": chat,
                       "text": text}]), flush=True)
'''


def worker_daemon(extra="", name="w", webhook="reply_deadline = 3s",
                  program=TEST_WORKER, start=True, more=""):
    d = Daemon("", webhook=webhook, start=False)
    path = os.path.join(d.dir, name)
    with open(path, "w") as f:
        f.write(program)
    os.chmod(path, stat.S_IRWXU)
    with open(d.conf, "a") as f:
        f.write("[handler.%s]\nworker = %s\n%s\n%s" % (name, path, extra,
                                                       more))
    if start:
        d.start()
        d.wait_log("handler %s: worker 0 started" % name)
    return d


def answer(d, text, uid, chat=42):
    status, _, _, body = d.deliver(message(text, uid, chat_id=chat))
    assert status == 200
    return json.loads(body)["text"] if body else None


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_poll_worker_creates_counts_and_closes():
    d = Daemon("[handler.poll]\nworker = %s\nworkers = 2\n"
               "updates = message callback_query\n" % POLL)
    with d:
        _, _, _, body = d.deliver(message("/poll Lunch? | Pizza | Sushi", 1,
                                          user_id=7))
        poll = json.loads(body)
        assert poll["method"] == "sendMessage"
        assert poll["text"].startswith("\U0001f4ca Lunch?")
        rows = poll["reply_markup"]["inline_keyboard"]
        assert [r[0]["text"] for r in rows] == ["Pizza", "Sushi", "Close"]
        pizza, sushi, close = (r[0]["callback_data"] for r in rows)
        # two votes: the toast inline, the count through the outbox
        toast = json.loads(d.deliver(callback(pizza, 2, user_id=8))[3])
        assert toast == {"method": "answerCallbackQuery",
                         "callback_query_id": "cq2",
                         "text": "You voted for Pizza."}
        d.deliver(callback(sushi, 3, user_id=9))
        edits = d.emu.wait_calls("editMessageText", 2)
        assert "Pizza: 1\nSushi: 1\n\n2 votes" in edits[1].params["text"]
        # a changed vote moves, a repeated one does not count twice
        d.deliver(callback(pizza, 4, user_id=9))
        edit = d.emu.wait_calls("editMessageText", 3)[2].params
        assert "Pizza: 2\nSushi: 0" in edit["text"]
        again = json.loads(d.deliver(callback(pizza, 5, user_id=9))[3])
        assert again["text"] == "You already voted for Pizza."
        # the standing, then closing: only by its author (inline once
        # the edits before it are out)
        settle(d)
        res = json.loads(d.deliver(message("/results", 6))[3])
        assert "Pizza: 2" in res["text"]
        no = json.loads(d.deliver(callback(close, 7, user_id=8))[3])
        assert no["text"] == "Only the poll's author can close it."
        d.deliver(callback(close, 8, user_id=7))
        final = d.emu.wait_calls("editMessageText", 4)[3].params
        assert "(closed)" in final["text"] and "reply_markup" not in final
        late = json.loads(d.deliver(callback(sushi, 9, user_id=10))[3])
        assert late["text"] == "This poll is closed."
        settle(d)
        usage = json.loads(d.deliver(message("/poll Only one | option", 10))[3])
        assert usage["text"].startswith("Usage: /poll")


def test_protocol_one_line_each_way():
    d = worker_daemon()
    with d:
        assert answer(d, "hello", 1) == "hello"
        # a pretty-printed update still reaches the worker as one line
        path, secret = stored_secrets(d.store)
        raw = post_update(d.port, message("newline", 2), path, secret,
                          indent=2)
        assert raw.startswith(b"HTTP/1.1 200"), raw
        out = raw.split(b"\r\n\r\n", 1)[1]
        assert json.loads(out)["text"] == "raw newline survived: True"
        answer(d, "log", 3)
        d.wait_log("handler w: worker 0: a line for the log")


def test_crash_is_dead_letter_and_worker_restarts():
    d = worker_daemon()
    with d:
        pid = int(answer(d, "pid", 1).split()[0])
        assert answer(d, "crash", 2) is None
        d.wait_log("handler w failed: worker 0 exited (closed its stdout) "
                   "while handling this update")
        d.wait_log("worker 0 (pid %d) exited with status 3; restarting in "
                   "100ms" % pid)
        rows = dead_letters(d)
        assert [(r[0], r[1]) for r in rows] == [(2, "w")]
        metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" %
                                         d.admin_port, timeout=5).read()
        assert b"tgwebhookd_worker_exits_total 1\n" in metrics
        deadline = time.time() + 5
        while True:   # answered again once restarted
            got = answer(d, "pid", 3 + int(time.time() * 10) % 1000)
            if got is not None or time.time() > deadline:
                break
            time.sleep(0.1)
        assert got is not None and int(got.split()[0]) != pid


def test_hang_is_killed_at_timeout():
    d = worker_daemon("timeout = 500ms")
    with d:
        pid = int(answer(d, "pid", 1).split()[0])
        t0 = time.time()
        assert answer(d, "hang", 2) is None
        assert time.time() - t0 < 2.5
        d.wait_log("handler w failed: worker 0 timed out after 500ms "
                   "(timeout = 500ms): killed and restarted")
        d.wait_log("worker 0 (pid %d) killed by signal 9" % pid)
        assert not alive(pid)
        assert [r[0] for r in dead_letters(d)] == [2]
        d.wait_log("worker 0 started", 5)
        assert answer(d, "after", 3) == "after"


def test_bad_answers():
    d = worker_daemon()
    with d:
        pid = answer(d, "pid", 1)
        # not JSON: that update fails, the worker stays in step
        assert answer(d, "garbage", 2) is None
        d.wait_log("handler w failed: bad answer: not JSON")
        assert answer(d, "pid", 3) == pid
        # {"error": ...}: a dead letter with the worker's reason
        assert answer(d, "error", 4) is None
        d.wait_log("handler w failed: failed: no such user")
        assert answer(d, "pid", 5) == pid
        # two lines for one update: out of step, so killed
        assert answer(d, "twolines", 6) is None
        d.wait_log("worker 0 wrote more than one line for one update: "
                   "killed and restarted")
        # (an update waits for the restart, within its timeout)
        assert answer(d, "pid", 7) != pid
        # a line over 1 MiB: killed before it is all read
        assert answer(d, "huge", 8) is None
        d.wait_log("worker 0 answered with a line over 1048576 bytes: "
                   "killed and restarted")
        reasons = [r[2] for r in dead_letters(d)]
        assert len(reasons) == 4, reasons


def test_line_after_the_answer_never_answers_the_next_update():
    # The review's finding: a second line a moment after the answer became
    # the next update's answer, and every later update got the one
    # before's.  Seen before the next update is written: the worker is
    # restarted, and each update gets its own answer.
    d = worker_daemon()
    with d:
        pid = answer(d, "pid", 1)
        assert answer(d, "late", 2) == "late"
        mark = os.path.join(d.dir, "w.stray")
        assert eventually(lambda: os.path.exists(mark))
        assert answer(d, "next", 3) == "next"
        d.wait_log('handler w: worker 0 is out of step: it wrote '
                   '"[{\"method\": \"sendMessage\", \"chat_id\": 42, '
                   '\"text\": \"stray\"}]" after its last answer; '
                   'restarting it')
        assert answer(d, "pid", 4) != pid
        assert answer(d, "after", 5) == "after"
        assert dead_letters(d) == []
        assert "stray" not in [c.params.get("text") for c in
                               d.emu.calls_of("sendMessage")]


def test_backoff_grows_when_worker_cannot_stay_up():
    d = worker_daemon(program="#!/bin/sh\necho 'config missing' >&2\n"
                      "exit 1\n", start=False)
    with d:
        d.start()
        d.wait_log("handler w: worker 0: config missing")
        d.wait_log("exited with status 1; restarting in 100ms")
        d.wait_log("exited with status 1; restarting in 200ms")
        d.wait_log("exited with status 1; restarting in 400ms")
        # meanwhile updates fail cleanly at the timeout, as dead letters
        assert answer(d, "x", 1) is None


def test_affinity_sends_a_chat_to_one_worker():
    d = worker_daemon("workers = 3")
    with d:
        for i in range(3):
            d.wait_log("handler w: worker %d started" % i)
        for chat in (42, 43, 44):
            seen = {answer(d, "pid", chat * 100 + i, chat=chat).split()[1]
                    for i in range(4)}
            assert seen == {str(chat % 3)}, seen


def test_reload_keeps_unchanged_pool_and_restarts_changed():
    d = worker_daemon()
    with d:
        path = os.path.join(d.dir, "w")
        os.link(path, path + "2")
        with open(d.conf, "a") as f:
            f.write("[handler.v]\nworker = %s2\nupdates = edited_message\n"
                    % path)
        pid = answer(d, "pid", 1)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload done")
        d.wait_log("handler v: worker 0 started")
        assert answer(d, "pid", 2) == pid      # unchanged: same process
        text = open(d.conf).read().replace("worker = %s\n" % path,
                                           "worker = %s\ntimeout = 4s\n" %
                                           path)
        open(d.conf, "w").write(text)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload done")
        deadline = time.time() + 5
        while not d.log().count("handler w: worker 0 started") == 2:
            assert time.time() < deadline, d.log()
            time.sleep(0.05)
        new = answer(d, "pid", 3)
        assert new != pid
        d.wait_log("handler w: workers stopped")   # the old pool
        assert not alive(int(pid.split()[0]))


def test_reload_during_an_update_drops_nothing():
    d = worker_daemon()
    with d:
        pid = answer(d, "pid", 1)
        got = []
        t = threading.Thread(target=lambda: got.append(answer(d, "slow", 2)))
        t.start()
        d.wait_log("handler w: worker 0: slow: working")  # the old one has it
        text = open(d.conf).read().replace("[handler.w]\n",
                                           "[handler.w]\ntimeout = 4s\n")
        open(d.conf, "w").write(text)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload done")
        t.join(10)
        assert got == ["slow"]      # answered inline by the old worker
        d.wait_log("handler w: workers stopped")    # then the old pool
        assert answer(d, "pid", 3) != pid


def test_stop_ends_every_worker():
    d = worker_daemon("workers = 2")
    with d:
        d.wait_log("handler w: worker 1 started")
        pids = [int(l.split("(pid ")[1].rstrip(")"))
                for l in d.log().splitlines() if "started (pid" in l]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        rc = d.stop()
        d.check_clean(rc)
        assert not any(alive(p) for p in pids)
