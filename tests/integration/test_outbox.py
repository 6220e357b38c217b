"""The durable outbox: rate limits, retries, migration, dead letters,
crashes, broadcasts and the operator commands."""

import json
import os
import signal
import sqlite3
import subprocess
import time

from harness import (Daemon, binary, eventually, message, outbox_daemon, rows,
                     texts)


def run(d, *args):
    return subprocess.run([binary(), "-c", d.conf] + list(args),
                          capture_output=True, env=d.env, timeout=30,
                          text=True)


def test_followups_delivered_in_order():
    with outbox_daemon(4) as d:
        status, _, _, body = d.deliver(message("x", 7))
        assert json.loads(body)["text"] == "m7-1"
        d.emu.wait_calls("sendMessage", 3)
        assert texts(d) == ["m7-2", "m7-3", "m7-4"]
        sent = d.emu.calls_of("sendMessage")
        # one chat: about a second apart, in order
        assert sent[1].time - sent[0].time >= 0.95
        assert sent[2].time - sent[1].time >= 0.95
        d.wait_log("update 7: message: handler calls: inline sendMessage, "
                   "3 follow-ups")


def test_429_retry_after_honoured():
    with outbox_daemon(2) as d:
        d.emu.script("sendMessage", (429, {
            "ok": False, "error_code": 429,
            "description": "Too Many Requests: retry after 2",
            "parameters": {"retry_after": 2}}, {"Retry-After": "2"}))
        d.deliver(message("x", 1))
        sent = d.emu.wait_calls("sendMessage", 2, timeout=10)
        assert sent[1].time - sent[0].time >= 1.95
        assert texts(d) == ["m1-2", "m1-2"]
        d.wait_log("Too Many Requests: retry after 2; waiting 2s")


def test_5xx_and_timeouts_retried_with_backoff():
    with outbox_daemon(2) as d:
        d.emu.script("sendMessage",
                     (502, {"ok": False, "error_code": 502,
                            "description": "Bad Gateway"}),
                     "hang", "garbage")
        d.deliver(message("x", 1))
        sent = d.emu.wait_calls("sendMessage", 4, timeout=25)
        assert [c.params["text"] for c in sent] == ["m1-2"] * 4
        log = d.log()
        assert "failed (attempt 1): Bad Gateway" in log
        assert "(attempt 2): sendMessage: Operation timed out" in log or \
            "(attempt 2): sendMessage: Timeout" in log, log[-2000:]
        assert "(attempt 3): the Bot API answered HTTP 200 without a Bot " \
            "API JSON envelope" in log
        deadline = time.time() + 5
        while rows(d, "method = 'sendMessage'")[0][2] != 1:   # delivered
            assert time.time() < deadline, rows(d)
            time.sleep(0.05)
        assert rows(d, "method = 'sendMessage'")[0][3] == 3   # attempts


def test_migrate_to_supergroup_followed():
    with outbox_daemon(3) as d:
        d.emu.script("sendMessage", (400, {
            "ok": False, "error_code": 400,
            "description": "Bad Request: group chat was upgraded to a "
                           "supergroup chat",
            "parameters": {"migrate_to_chat_id": -1001234567890}}))
        d.deliver(message("x", 3, chat_id=-4242))
        sent = d.emu.wait_calls("sendMessage", 3, timeout=15)
        assert sent[0].params["chat_id"] == -4242
        assert [c.params["chat_id"] for c in sent[1:]] == [-1001234567890] * 2
        assert [c.params["text"] for c in sent[1:]] == ["m3-2", "m3-3"]
        d.wait_log("chat -4242 became supergroup -1001234567890")


def test_redirect_never_followed():
    with outbox_daemon(2) as d:
        d.emu.script("sendMessage", (302, {"ok": False},
                                     {"Location": "http://127.0.0.1:9/x"}))
        d.deliver(message("x", 6))
        d.emu.wait_calls("sendMessage", 1)
        d.wait_log("a redirect, which is never followed: check api_url")
        dead = eventually(lambda: rows(d, "state = 2"))
        assert dead and dead[0][0] == "sendMessage", dead
        # not tried again: a later call to the same chat goes out, and
        # per-chat order sends it only once that one is settled
        d.deliver(message("x", 7))
        d.emu.wait_calls("sendMessage", 2)
        assert texts(d) == ["m6-2", "m7-2"], texts(d)


def test_403_dead_letter_listed_and_retried():
    with outbox_daemon(2) as d:
        d.emu.script("sendMessage", (403, {
            "ok": False, "error_code": 403,
            "description": "Forbidden: bot was blocked by the user"}))
        d.deliver(message("x", 5))
        d.emu.wait_calls("sendMessage", 1)
        d.wait_log("is a dead letter: Forbidden: bot was blocked by the user")
        assert eventually(lambda: rows(d, "state = 2"))   # recorded after
        out = run(d, "--outbox")
        assert out.returncode == 0, out
        assert "dead letters: 1" in out.stdout
        assert "Forbidden: bot was blocked by the user" in out.stdout
        assert "sendMessage" in out.stdout
        out = run(d, "--retry-dead", "all")
        assert out.returncode == 0 and "1 dead letter(s) queued again" in \
            out.stdout, out
        d.emu.wait_calls("sendMessage", 2, timeout=10)
        assert texts(d) == ["m5-2", "m5-2"]
        out = run(d, "--retry-dead", "nonsense")
        assert out.returncode == 2
        out = run(d, "--purge-dead", "0s")
        assert out.returncode == 0


def test_sigkill_loses_nothing_and_redelivery_queues_nothing_twice():
    d = outbox_daemon(3)
    with d:
        # the Bot API is down: follow-ups pile up in the store
        d.emu.script("sendMessage", *[(502, {
            "ok": False, "error_code": 502, "description": "Bad Gateway"})]
            * 1000)
        for uid in (11, 12, 13):
            assert d.deliver(message("x", uid, chat_id=uid))[0] == 200
        d.emu.wait_calls("sendMessage", 3, timeout=10)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.logf.close()
        d.proc = None
        pending = rows(d, "state = 0")
        assert len(pending) == 6, pending
        d.emu.scripts.clear()
        d.emu.calls.clear()
        d.start()
        d.emu.wait_calls("sendMessage", 6, timeout=15)
        want = sorted("m%d-%d" % (u, i) for u in (11, 12, 13)
                      for i in (2, 3))
        assert sorted(texts(d)) == want
        # Telegram delivers update 12 again (our answer was lost): the
        # handler runs again, its follow-ups are not queued twice
        status, _, _, body = d.deliver(message("x", 12, chat_id=12))
        assert json.loads(body)["text"] == "m12-1"
        assert len(rows(d, "chat = '12'")) == 2
        # a later update to that chat: its follow-ups go out after
        # anything update 12 might have queued again (per-chat order)
        d.deliver(message("x", 14, chat_id=12))
        d.emu.wait_calls("sendMessage", 8, timeout=15)
        assert sorted(texts(d)) == sorted(want + ["m14-2", "m14-3"])
        assert len(rows(d, "chat = '12'")) == 4


def test_broadcast_rate_limits_zero_429():
    """300 chats and 10 messages to one chat against an emulator that
    enforces Telegram's limits: no 429, one-chat messages 1 s apart."""
    d = Daemon("[handler.none]\ncommands = /none\nreply = x\n")
    with d:
        d.emu.enforce_limits = True
        path = os.path.join(d.dir, "broadcast.jsonl")
        with open(path, "w") as f:
            f.write("# 300 chats, then 10 messages to one chat\n")
            for chat in range(1, 301):
                f.write(json.dumps({"method": "sendMessage",
                                    "chat_id": 1000 + chat,
                                    "text": "news %d" % chat}) + "\n")
            for i in range(10):
                f.write(json.dumps({"method": "sendMessage",
                                    "chat_id": 77, "text": "one %d" % i})
                        + "\n")
        t0 = time.time()
        out = run(d, "--broadcast", path)
        assert out.returncode == 0, out
        assert "310 call(s), 310 queued now" in out.stdout
        sent = d.emu.wait_calls("sendMessage", 310, timeout=40)
        took = time.time() - t0
        assert d.emu.violations == 0
        one = [c.time for c in sent if c.params["chat_id"] == 77]
        assert len(one) == 10
        assert all(b - a >= 0.98 for a, b in zip(one, one[1:])), one
        assert took >= 310 / 30 - 1, took
        # the same file again: a resume, nothing sent twice
        out = run(d, "--broadcast", path)
        assert "0 queued now, 310 were queued before" in out.stdout, out
        assert len(rows(d)) == 310      # no row: nothing can go twice
        # and a call queued after it to the busiest chat is sent after
        # anything queued before it there (per-chat order)
        marker = os.path.join(d.dir, "marker.jsonl")
        with open(marker, "w") as f:
            f.write(json.dumps({"method": "sendMessage", "chat_id": 77,
                                "text": "marker"}) + "\n")
        assert run(d, "--broadcast", marker).returncode == 0
        sent = d.emu.wait_calls("sendMessage", 311, timeout=10)
        assert sent[-1].params["text"] == "marker", sent[-1]
        assert len(d.emu.calls_of("sendMessage")) == 311


def test_broadcast_chat_ids_with_text_over_a_window():
    d = Daemon("[handler.none]\ncommands = /none\nreply = x\n")
    with d:
        path = os.path.join(d.dir, "ids.txt")
        with open(path, "w") as f:
            f.write("101\n-100200\n@somechannel\n\n# done\n")
        t0 = time.time()
        out = run(d, "--broadcast", path, "--text", "Hello all",
                  "--over", "2s")
        assert out.returncode == 0, out
        sent = d.emu.wait_calls("sendMessage", 3, timeout=10)
        assert [c.params["chat_id"] for c in sent] == [101, -100200,
                                                        "@somechannel"]
        assert {c.params["text"] for c in sent} == {"Hello all"}
        # spread over 2 s: the third is due 4/3 s after the start
        assert sent[2].time - t0 >= 1.3, sent[2].time - t0
        bad = os.path.join(d.dir, "bad.txt")
        with open(bad, "w") as f:
            f.write("101\nnot a chat\n{\"no\": \"method\"}\n")
        out = run(d, "--broadcast", bad)
        assert out.returncode == 1
        assert "%s:1: a chat id needs --text" % bad in out.stderr
        assert "%s:2: 'not a chat' is neither" % bad in out.stderr
        assert "%s:3: a call needs \"method\"" % bad in out.stderr


def test_group_window_does_not_hold_up_other_chats():
    d = outbox_daemon(4, outbox="group_per_minute = 2\n")
    with d:
        d.deliver(message("x", 1, chat_id=-555))
        d.deliver(message("y", 2, chat_id=9))

        def sent_to(chat):
            return [c for c in d.emu.calls_of("sendMessage")
                    if c.params["chat_id"] == chat]
        # one a second, not held up by the group
        assert eventually(lambda: len(sent_to(9)) == 3), sent_to(9)
        # three more to the private chat, due seconds after the group's
        # third would have been without its window: the sender got past
        d.deliver(message("z", 3, chat_id=9))
        assert eventually(lambda: len(sent_to(9)) == 6), sent_to(9)
        group = sent_to(-555)
        assert len(group) == 2, group      # the third waits for the minute
        out = run(d, "--outbox")
        assert "pending: 1" in out.stdout, out.stdout


def test_sync_full_and_bad_values():
    with outbox_daemon(2, webhook="") as d:
        pass
    d = Daemon("[handler.a]\nreply = x\n", extra="[outbox]\nrate = 0\n"
               "[store]\n", start=False)
    with d:
        out = run(d, "-t")
        assert out.returncode == 1
        assert "rate: 0 is out of range 1..1000" in out.stderr
    d = Daemon("[handler.a]\nreply = x\n", start=False)
    with d:
        text = open(d.conf).read().replace("[store]\n", "[store]\nsync = "
                                           "full\n")
        open(d.conf, "w").write(text)
        d.start()
        status, _, _, body = d.deliver(message("x", 1))
        assert status == 200 and json.loads(body)["text"] == "x"


def test_late_handler_held_across_a_crash():
    """The webhook is answered at reply_deadline while the handler still
    runs; the daemon dies before the handler's calls are queued: at the
    next start the update is handled again and its calls go out."""
    d = Daemon("", webhook="reply_deadline = 200ms", start=False)
    path = os.path.join(d.dir, "slow")
    with open(path, "w") as f:
        f.write("#!/bin/sh\ncat > /dev/null\nsleep 1.5\nprintf "
                "'{\"method\":\"sendMessage\",\"chat_id\":%s,\"text\":"
                "\"late %s\"}' \"$TGW_CHAT_ID\" \"$TGW_UPDATE_ID\"\n")
    os.chmod(path, 0o700)
    with open(d.conf, "a") as f:
        f.write("[handler.slow]\nexec = %s\n" % path)
    with d:
        d.start()
        status, _, _, body = d.deliver(message("x", 21))
        assert status == 200 and body == b""
        db = sqlite3.connect(os.path.join(d.store, "tgwebhookd.db"))
        held = db.execute("SELECT update_id FROM held_updates").fetchall()
        db.close()
        assert held == [(21,)]
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.logf.close()
        d.proc = None
        assert d.emu.calls_of("sendMessage") == []
        d.start()
        sent = d.emu.wait_calls("sendMessage", 1, timeout=10)
        assert sent[0].params["text"] == "late 21"
        d.wait_log("update 21: its handler was still running when the "
                   "daemon stopped")
        deadline = time.time() + 5
        while True:
            db = sqlite3.connect(os.path.join(d.store, "tgwebhookd.db"))
            n = db.execute("SELECT count(*) FROM held_updates").fetchone()[0]
            db.close()
            if n == 0:
                break
            assert time.time() < deadline
            time.sleep(0.05)


def test_local_file_uploaded_as_a_follow_up():
    d = Daemon("", start=False)
    uploads = os.path.join(d.dir, "uploads")
    os.makedirs(uploads)
    handler = os.path.join(d.dir, "report")
    with open(handler, "w") as f:
        # the handler writes a file, then asks for it to be sent first
        # and a message after it
        f.write("#!/bin/sh\ncat >/dev/null\n"
                "printf 'report for %%s\\n' \"$TGW_CHAT_ID\" > %s/r.txt\n"
                "printf '{\"method\":\"sendDocument\",\"chat_id\":%%s,"
                "\"document\":\"file://%s/r.txt\",\"caption\":\"Q3\"}\\n' "
                "\"$TGW_CHAT_ID\"\n"
                "printf '{\"method\":\"sendMessage\",\"chat_id\":%%s,"
                "\"text\":\"sent\"}\\n' \"$TGW_CHAT_ID\"\n"
                "printf '{\"method\":\"sendDocument\",\"chat_id\":%%s,"
                "\"document\":\"file:///etc/hostname\"}\\n' \"$TGW_CHAT_ID\"\n"
                % (uploads, uploads))
    os.chmod(handler, 0o700)
    with open(d.conf, "a") as f:
        f.write("[outbox]\nupload_dir = %s\n[handler.report]\nexec = %s\n"
                % (uploads, handler))
    with d:
        d.start()
        status, _, _, body = d.deliver(message("/report", 30, chat_id=77))
        # a webhook answer carries no file: nothing inline, all follow-ups
        assert status == 200 and body == b"", body
        doc = d.emu.wait_calls("sendDocument", 1)[0]
        assert doc.content_type.startswith("multipart/form-data")
        assert doc.files["document"] == ("r.txt", b"report for 77\n")
        assert doc.params["caption"] == "Q3" and \
            doc.params["chat_id"] == "77"
        d.emu.wait_calls("sendMessage", 1)
        # a file outside upload_dir is never read: a dead letter
        d.wait_log("is a dead letter: /etc/hostname is not under [outbox] "
                   "upload_dir")
        assert len(d.emu.calls_of("sendDocument")) == 1


def swapped_upload_daemon(n):
    """A daemon whose handler asks for n uploads of uploads/f, each to a
    chat of its own, then a message; its upload_dir and a secret file
    outside it."""
    d = Daemon("", start=False)
    uploads = os.path.join(d.dir, "uploads")
    os.makedirs(uploads)
    secret = os.path.join(d.dir, "secret.txt")
    with open(secret, "w") as f:
        f.write("SECRET-OUTSIDE\n")
    handler = os.path.join(d.dir, "many")
    with open(handler, "w") as f:
        f.write("#!/bin/sh\ncat >/dev/null\ni=1\nwhile [ $i -le %d ]; do\n"
                "printf '{\"method\":\"sendDocument\",\"chat_id\":%%s,"
                "\"document\":\"file://%s/f\"}\\n' $((1000+i))\n"
                "i=$((i+1))\ndone\n"
                "printf '{\"method\":\"sendMessage\",\"chat_id\":999,"
                "\"text\":\"after\"}\\n'\n" % (n, uploads))
    os.chmod(handler, 0o700)
    with open(d.conf, "a") as f:
        f.write("[outbox]\nupload_dir = %s\nrate = 25\nchat_interval = 0\n"
                "[handler.many]\nexec = %s\n" % (uploads, handler))
    return d, uploads, secret


def swapper(uploads, make_other, stop):
    """Swaps uploads/f between a regular file and something else, each
    time by an atomic rename, until stop is set."""
    target = os.path.join(uploads, "f")
    i = 0
    while not stop.is_set():
        i += 1
        tmp = os.path.join(uploads, ".tmp%d" % i)
        if i % 2:
            with open(tmp, "w") as f:
                f.write("inside\n")
        else:
            make_other(tmp)
        os.rename(tmp, target)


def run_swapped_uploads(make_other, why):
    import threading
    n = 38
    d, uploads, secret = swapped_upload_daemon(n)
    with open(os.path.join(uploads, "f"), "w") as f:
        f.write("inside\n")
    stop = threading.Event()
    t = threading.Thread(target=swapper,
                         args=(uploads, lambda p: make_other(p, secret), stop))
    with d:
        d.start()
        t.start()
        try:
            status, _, _, _ = d.deliver(message("/many", 40))
            assert status == 200
            # the sender goes on past every swap: the last call goes out
            d.emu.wait_calls("sendMessage", 1, timeout=30)
            assert texts(d) == ["after"]
        finally:
            stop.set()
            t.join()
        docs = d.emu.calls_of("sendDocument")
        # only ever the regular file under upload_dir, read as opened
        assert [c.files["document"] for c in docs] == \
            [("f", b"inside\n")] * len(docs)
        dead = rows(d, "method = 'sendDocument' AND state = 2")
        assert len(docs) + len(dead) == n, (len(docs), len(dead))
        assert all(why in r[4] for r in dead), dead
        return len(docs), len(dead)


def test_upload_swapped_for_a_symlink_never_sends_what_it_points_to():
    # The review's attack: the name swapped for a link to a file outside
    # upload_dir between the check and the read.
    run_swapped_uploads(lambda p, secret: os.symlink(secret, p),
                        "is a symbolic link, which is never followed")


def test_upload_swapped_for_a_fifo_does_not_block_the_sender():
    # A FIFO swapped in: never opened for a blocking read; the sender
    # goes on, and SIGTERM stops the daemon (the with block checks it).
    run_swapped_uploads(lambda p, secret: os.mkfifo(p),
                        "not a regular file")


def test_handler_output_cannot_repoint_the_webhook():
    # A handler's bug or an injection must not take the webhook away:
    # setWebhook (any case), deleteWebhook, logOut and close become dead
    # letters saying why; the handler's other calls go out.
    d = Daemon("", start=False)
    handler = os.path.join(d.dir, "repoint")
    calls = [{"method": "setWebhook", "url": "https://evil.example/x",
              "secret_token": "theirs"},
             {"method": "SetWebhook", "url": "https://evil.example/y"},
             {"method": "deleteWebhook"}, {"method": "logOut"},
             {"method": "close"},
             {"method": "sendMessage", "chat_id": 5, "text": "still here"}]
    with open(handler, "w") as f:
        f.write("#!/bin/sh\ncat >/dev/null\ncat <<'EOF'\n%s\nEOF\n"
                % "\n".join(json.dumps(c) for c in calls))
    os.chmod(handler, 0o700)
    with open(d.conf, "a") as f:
        f.write("[handler.repoint]\nexec = %s\n" % handler)
    with d:
        d.start()
        status, _, _, body = d.deliver(message("/x", 50, chat_id=5))
        assert status == 200 and body == b"", body
        d.emu.wait_calls("sendMessage", 1)
        dead = eventually(lambda: len(rows(d, "state = 2")) == 5 and
                          rows(d, "state = 2"))
        assert dead, rows(d)
        assert [r[0] for r in dead] == ["setWebhook", "SetWebhook",
                                        "deleteWebhook", "logOut", "close"]
        for r in dead:
            assert "%s is refused from handler output: the webhook is " \
                "tgwebhookd's own" % r[0] in r[4], r
        # only the daemon's own registration reached Telegram
        for m in ("setWebhook", "deleteWebhook", "logOut", "close"):
            assert len(d.emu.calls_of(m)) == (m == "setWebhook"), m
        assert d.emu.webhook["url"].startswith("https://localhost")
        status, _, _, _ = d.deliver(message("/x", 51, chat_id=5))
        assert status == 200
