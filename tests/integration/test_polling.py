"""The getUpdates source: the same pipeline as the webhook, offsets kept
in the store and moved only past durable updates, 409 both ways and the
takeover, 429 and garbage answers, SIGTERM during a long poll, SIGKILL in
the middle of a batch, restarts, one chat's order, reloads, and switching
between webhook and polling."""

import json
import os
import re
import signal
import sqlite3
import time
import urllib.request

from harness import Daemon, calls_script, eventually, message, texts

REPLY = "[handler.start]\ncommands = /start\nreply = Hello, {from.first_name}!\n"


def polling_daemon(handlers=REPLY, polling="timeout = 2s\n", bot="",
                   start=True, **kw):
    """A daemon with source = polling and no [webhook] key of its own."""
    d = Daemon(handlers, tls=False, register=False, start=False,
               extra="[bot]\nsource = polling\n%s[polling]\n%s" % (
                   bot, polling), **kw)
    if start:
        d.start()
    return d


def offset(d):
    db = sqlite3.connect(os.path.join(d.store, "tgwebhookd.db"))
    try:
        row = db.execute("SELECT next FROM offsets WHERE source = 'polling'"
                         ).fetchone()
        return row[0] if row else None
    finally:
        db.close()


def all_sent(d, n):
    """Waits until the offset has passed every update a test gave (their
    calls are then in the store: nothing more can be queued), then until
    the store's n sendMessage calls are all delivered; returns what the
    emulator received.  'Nothing more happened' is the store's count, not
    a pause."""
    db = os.path.join(d.store, "tgwebhookd.db")

    def count(state=None):
        c = sqlite3.connect(db)
        try:
            return c.execute("SELECT count(*) FROM calls WHERE method = "
                             "'sendMessage'" + ("" if state is None else
                                                " AND state = %d" % state)
                             ).fetchone()[0]
        finally:
            c.close()
    assert eventually(lambda: count() >= n)
    assert count() == n, count()
    assert eventually(lambda: count(1) == n)   # delivered
    return d.emu.calls_of("sendMessage")


def admin(d, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (
                d.admin_port, path), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def kill(d):
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d.logf.close()
    d.proc = None


def script(d, name, body):
    path = os.path.join(d.dir, name)
    with open(path, "w") as f:
        f.write(body)
    os.chmod(path, 0o700)
    return path


def test_reply_over_polling_and_offset_kept():
    with polling_daemon() as d:
        assert "no webhook listener" in d.log()
        d.emu.push_update(message("/start", 5))
        sent = d.emu.wait_calls("sendMessage", 1)
        assert sent[0].params == {"chat_id": 42, "text": "Hello, Ann!"}
        # confirmed: the next poll asks from 6, kept in the store
        assert eventually(lambda: offset(d) == 6)
        assert eventually(lambda: d.emu.pending_updates() == [])
        polls = d.emu.calls_of("getUpdates")
        assert polls[0].params["timeout"] == 2
        assert polls[0].params["limit"] == 100
        assert "allowed_updates" not in polls[0].params
        # never a webhook call in polling mode
        assert d.emu.calls_of("setWebhook") == []
        assert d.emu.calls_of("deleteWebhook") == []
        status, health = admin(d, "/healthz")
        h = json.loads(health)
        assert status == 200, health
        assert h["source"] == "polling"
        assert h["polling"]["offset"] == 6
        assert h["polling"]["polls"] >= 1
        assert h["polling"]["last_success_ms"] > 0
        _, metrics = admin(d, "/metrics")
        assert 'tgwebhookd_source{source="polling"} 1' in metrics
        assert "tgwebhookd_poll_offset 6" in metrics
        assert "tgwebhookd_polls_total" in metrics


WEBHOOK = {"url": "https://example.org:8443/hook", "secret": "", "cert": None,
           "max_connections": 40, "allowed_updates": None}


def test_409_webhook_set_said_and_never_deleted():
    from test_service import NotifySocket
    d = polling_daemon(start=False)
    with d:
        n = NotifySocket(d.dir)
        d.env.update(NOTIFY_SOCKET=n.path)
        d.emu.webhook = dict(WEBHOOK)
        d.start()
        d.wait_log("getUpdates: 409, a webhook is set for this bot")
        assert "run `tgwebhookd --delete-webhook`, or set [polling] " \
            "takeover = on" in d.log()
        status = n.read("STATUS=polling; last error: 409: a webhook is set")
        assert "tgwebhookd --delete-webhook" in status, status
        code, health = admin(d, "/healthz")
        h = json.loads(health)
        assert code == 503 and h["polling"]["conflict"] is True, health
        assert "a webhook is set" in h["polling"]["last_error"]
        _, metrics = admin(d, "/metrics")
        assert "tgwebhookd_poll_conflict 1" in metrics
        # never deleted implicitly
        assert d.emu.calls_of("deleteWebhook") == []
        assert d.emu.webhook is not None
        # the operator deletes it: polling goes on with backoff
        d.emu.webhook = None
        d.emu.push_update(message("/start", 1))
        d.emu.wait_calls("sendMessage", 1, timeout=30)
        d.wait_log("getUpdates: polling again")
        n.read("STATUS=polling; offset 2")
        assert eventually(lambda: admin(d, "/healthz")[0] == 200)


def test_409_setwebhook_ends_a_long_poll():
    """Someone sets a webhook while the daemon waits in a 50 s poll: the
    poll ends at once with 409, said as a webhook conflict."""
    with polling_daemon(polling="timeout = 50s\n") as d:
        assert eventually(lambda: d.emu.polls_active == 1)
        req = urllib.request.Request(
            "%s/bot%s/setWebhook" % (d.emu.url, d.emu.token),
            data=json.dumps({"url": "https://example.org:8443/x"}).encode(),
            headers={"Content-Type": "application/json"})
        t0 = time.time()
        urllib.request.urlopen(req, timeout=5).read()
        d.wait_log("getUpdates: 409, a webhook is set for this bot "
                   "(Conflict: terminated by setWebhook request)", timeout=5)
        assert time.time() - t0 < 5
        assert "another getUpdates" not in d.log()
        d.emu.webhook = None


def test_409_second_instance_said_plainly():
    first = polling_daemon()
    second = polling_daemon(emu=first.emu, start=False)
    try:
        second.start()
        # each poll of one terminates the other's: both are told
        first.wait_log("another getUpdates is running with this bot's "
                       "token", timeout=15)
        second.wait_log("a second instance of this bot, or another "
                        "program, polls it; only one may", timeout=15)
        assert second.stop() == 0
        second.tmp.cleanup()
        first.emu.push_update(message("/start", 3))
        first.emu.wait_calls("sendMessage", 1, timeout=30)
        assert eventually(lambda: offset(first) == 4)
        assert len(all_sent(first, 1)) == 1
        first.check_clean(first.stop())
    finally:
        first.close()


def test_takeover_deletes_webhook_once_keeping_pending_updates():
    d = polling_daemon(polling="timeout = 2s\ntakeover = on\n", start=False)
    with d:
        d.emu.webhook = dict(WEBHOOK)
        d.emu.push_update(message("/start", 10))
        d.start()
        d.emu.wait_calls("sendMessage", 1, timeout=15)
        dels = d.emu.calls_of("deleteWebhook")
        assert len(dels) == 1
        assert dels[0].params["drop_pending_updates"] is False
        d.wait_log("[polling] takeover = on: deleting it (keeping pending "
                   "updates)")
        # set again by someone else: said, not deleted a second time
        d.emu.webhook = dict(WEBHOOK)
        d.wait_log("it was deleted once already: something sets it again",
                   timeout=15)
        assert len(d.emu.calls_of("deleteWebhook")) == 1


def test_takeover_tried_again_when_deletewebhook_fails():
    d = polling_daemon(polling="timeout = 2s\ntakeover = on\n", start=False)
    with d:
        d.emu.webhook = dict(WEBHOOK)
        d.emu.script("deleteWebhook", (502, {"ok": False, "error_code": 502,
                                             "description": "Bad Gateway"}))
        d.emu.push_update(message("/start", 10))
        d.start()
        d.emu.wait_calls("sendMessage", 1, timeout=20)
        assert len(d.emu.calls_of("deleteWebhook")) == 2
        assert "deleteWebhook failed: Bad Gateway (tried again at the next " \
            "409)" in d.log()


def test_takeover_drops_pending_updates_when_asked():
    d = polling_daemon(polling="timeout = 2s\ntakeover = on\n",
                       webhook="drop_pending_updates = on", start=False)
    with d:
        d.emu.webhook = dict(WEBHOOK)
        d.emu.push_update(message("/start", 10))
        d.start()
        dels = d.emu.wait_calls("deleteWebhook", 1)
        assert dels[0].params["drop_pending_updates"] is True
        d.emu.push_update(message("/start", 11))
        d.emu.wait_calls("sendMessage", 1, timeout=15)
        assert eventually(lambda: offset(d) == 12)
        # update 10 was dropped with the webhook: one reply, to 11
        assert len(all_sent(d, 1)) == 1


def test_429_garbage_and_too_large_answers_retried():
    d = polling_daemon(start=False)
    with d:
        huge = {"ok": True, "result": [dict(message("x" * (5 << 20), 1))]}
        d.emu.script("getUpdates",
                     (429, {"ok": False, "error_code": 429,
                            "description": "Too Many Requests: retry after 1",
                            "parameters": {"retry_after": 1}}),
                     "garbage",
                     (200, huge),
                     (200, {"ok": True, "result": {"not": "a list"}}))
        d.emu.push_update(message("/start", 2))
        d.start()
        d.emu.wait_calls("sendMessage", 1, timeout=30)
        log = d.log()
        assert "getUpdates: 429, retry after 1 s" in log
        assert "getUpdates: the Bot API answered HTTP 200 without a Bot " \
            "API JSON envelope" in log
        assert "getUpdates: the Bot API answer is larger than 4194304 " \
            "bytes" in log
        assert "getUpdates: the answer's result is not a list of updates" \
            in log
        polls = d.emu.calls_of("getUpdates")
        assert polls[1].time - polls[0].time >= 0.95    # retry_after
        _, metrics = admin(d, "/metrics")
        assert "tgwebhookd_poll_errors_total 4" in metrics, metrics


def test_sigterm_ends_a_long_poll_at_once():
    with polling_daemon(polling="timeout = 50s\n") as d:
        d.emu.wait_calls("getUpdates", 1)
        assert eventually(lambda: d.emu.polls_active == 1)
        t0 = time.time()
        d.check_clean(d.stop())
        assert time.time() - t0 < 3, time.time() - t0
        assert "stopped" in d.log()


def test_sigkill_mid_batch_loses_nothing_and_sends_nothing_twice():
    d = polling_daemon("", start=False)
    slow = script(d, "slow", "#!/bin/sh\ncat >/dev/null\nsleep 1\nprintf "
                  "'{\"method\":\"sendMessage\",\"chat_id\":%s,\"text\":"
                  "\"done %s\"}\\n' \"$TGW_CHAT_ID\" \"$TGW_UPDATE_ID\"\n")
    with open(d.conf, "a") as f:
        f.write("[handler.slow]\nexec = %s\n" % slow)
    with d:
        for i in range(1, 7):
            d.emu.push_update(message("u%d" % i, i, chat_id=100 + i))
        d.start()
        # the batch is in hand: every update held while its handler runs,
        # the offset already past them (held is durable)
        db = os.path.join(d.store, "tgwebhookd.db")

        def held():
            c = sqlite3.connect(db)
            try:
                return c.execute("SELECT count(*) FROM held_updates"
                                 ).fetchone()[0]
            finally:
                c.close()
        assert eventually(lambda: held() == 6 and offset(d) == 7)
        assert d.emu.calls_of("sendMessage") == []
        kill(d)
        d.start()
        d.emu.wait_calls("sendMessage", 6, timeout=20)
        assert eventually(lambda: held() == 0)
        # no update's call queued twice, each sent once
        all_sent(d, 6)
        assert sorted(texts(d)) == ["done %d" % i for i in range(1, 7)]
        # the restart asked from the kept offset: nothing handled twice
        assert d.emu.calls_of("getUpdates")[-1].params["offset"] == 7
        assert d.log().count("handler slow: ") == 6


def test_restart_resumes_from_the_kept_offset():
    d = polling_daemon()
    with d:
        for i in (1, 2):
            d.emu.push_update(message("/start", i, chat_id=i))
        d.emu.wait_calls("sendMessage", 2)
        assert eventually(lambda: offset(d) == 3)
        d.check_clean(d.stop())
        for i in (3, 4):
            d.emu.push_update(message("/start", i, chat_id=i))
        since = len(d.emu.calls_of("getUpdates"))
        d.start()
        d.emu.wait_calls("sendMessage", 4)
        assert d.emu.calls_of("getUpdates")[since].params["offset"] == 3
        assert eventually(lambda: offset(d) == 5)
        chats = sorted(c.params["chat_id"] for c in all_sent(d, 4))
        assert chats == [1, 2, 3, 4]


def test_one_chats_order_kept_across_a_batch():
    reply = "[handler.echo]\nreply = {text}\n"
    d = polling_daemon(reply, start=False)
    with d:
        # one batch, three chats interleaved
        n = 0
        for k in range(3):
            for chat in (1, 2, 3):
                n += 1
                d.emu.push_update(message("c%d-%d" % (chat, k), n,
                                          chat_id=chat))
        d.start()
        d.emu.wait_calls("sendMessage", 9, timeout=20)
        assert len([c for c in d.emu.calls_of("getUpdates")
                    if c.params.get("offset") == 0]) >= 1
        for chat in (1, 2, 3):
            got = [c.params["text"] for c in d.emu.calls_of("sendMessage")
                   if c.params["chat_id"] == chat]
            assert got == ["c%d-%d" % (chat, k) for k in range(3)], got


def test_reload_loses_no_update():
    d = polling_daemon()
    with d:
        d.emu.push_update(message("/start", 1))
        d.emu.wait_calls("sendMessage", 1)
        with open(d.conf) as f:
            text = f.read()
        with open(d.conf, "w") as f:
            f.write(text.replace("reply = Hello, {from.first_name}!",
                                 "reply = Welcome back, {from.first_name}!"))
        d.emu.push_update(message("/start", 2, chat_id=43))
        d.proc.send_signal(signal.SIGHUP)
        d.emu.push_update(message("/start", 3, chat_id=44))
        d.wait_log("reload done")
        d.emu.push_update(message("/start", 4, chat_id=45))
        d.emu.wait_calls("sendMessage", 4, timeout=15)
        assert eventually(lambda: offset(d) == 5)
        assert len(all_sent(d, 4)) == 4
        sent = {c.params["chat_id"]: c.params["text"] for c in
                d.emu.calls_of("sendMessage")}
        assert sent[42] == "Hello, Ann!"
        assert sent[45] == "Welcome back, Ann!"


def test_switching_webhook_polling_webhook_loses_nothing():
    import tempfile
    from harness import binary
    import subprocess
    keep = tempfile.TemporaryDirectory(prefix="tgw-switch-")
    store = os.path.join(keep.name, "store")
    hook = Daemon(REPLY, store=store)
    emu = hook.emu
    try:
        status, _, _, body = hook.deliver(message("/start", 1))
        assert json.loads(body)["text"] == "Hello, Ann!"
        hook.check_clean(hook.stop())
        # to polling: the operator deletes the webhook
        out = subprocess.run([binary(), "-c", hook.conf, "--delete-webhook"],
                             capture_output=True, env=hook.env, timeout=20)
        assert out.returncode == 0, out
        poll = polling_daemon(emu=emu, store=store)
        emu.push_update(message("/start", 2, chat_id=2))
        emu.push_update(message("/start", 3, chat_id=3))
        emu.wait_calls("sendMessage", 2)
        assert eventually(lambda: offset(poll) == 4)
        poll.check_clean(poll.stop())
        poll.tmp.cleanup()
        # back to the webhook: registered again at start, same secrets
        sets = len(emu.calls_of("setWebhook"))
        emu.forward = ("127.0.0.1", hook.port)
        hook.start()
        assert len(emu.calls_of("setWebhook")) > sets
        assert emu.webhook is not None
        status, _, _, body = hook.deliver(message("/start", 4, chat_id=4))
        assert status == 200 and json.loads(body)["chat_id"] == 4
        # a redelivery of the last one is not handled again
        status, _, _, body = hook.deliver(message("/start", 4, chat_id=4))
        assert status == 200 and body == b""
        chats = sorted(c.params["chat_id"] for c in
                       emu.calls_of("sendMessage"))
        assert chats == [2, 3]
        hook.check_clean(hook.stop())
    finally:
        hook.close()
        keep.cleanup()


def test_busy_update_stops_the_offset_and_is_asked_for_again():
    # one handler thread, so at most 32 updates wait for it: a batch of 40
    # has 8 answered busy, which the offset must not pass
    d = polling_daemon("", bot="[server]\nhandler_threads = 1\n", start=False)
    quick = script(d, "quick", "#!/bin/sh\ncat >/dev/null\nsleep 0.05\n"
                   "printf '{\"method\":\"sendMessage\",\"chat_id\":%s,"
                   "\"text\":\"u%s\"}\\n' \"$TGW_CHAT_ID\" \"$TGW_UPDATE_ID\"\n")
    with open(d.conf, "a") as f:
        f.write("[handler.quick]\nexec = %s\n" % quick)
    with d:
        for i in range(1, 41):
            d.emu.push_update(message("x", i, chat_id=1000 + i))
        d.start()
        d.emu.wait_calls("sendMessage", 40, timeout=40)
        d.wait_log(": not taken now (busy); asked for again after a pause")
        # how many the one thread took first depends on its speed
        busy = int(re.search(r"update (\d+): not taken now \(busy\); asked "
                             r"for again after a pause, with the (\d+) after "
                             r"it in this batch", d.log()).group(1))
        assert 30 <= busy <= 34, busy
        assert busy in [c.params.get("offset") for c in
                        d.emu.calls_of("getUpdates")]
        assert eventually(lambda: offset(d) == 41)
        all_sent(d, 40)
        assert sorted(texts(d)) == sorted("u%d" % i for i in range(1, 41))


def test_allowed_updates_sent_and_honoured():
    handlers = REPLY + "[handler.any]\nreply = any {update_id}\n"
    with polling_daemon(handlers, webhook="allowed_updates = message") as d:
        from harness import callback
        d.emu.push_update(callback("b", 1))
        d.emu.push_update(message("/start", 2))
        d.emu.wait_calls("sendMessage", 1)
        assert d.emu.calls_of("getUpdates")[0].params["allowed_updates"] == \
            ["message"]
        assert eventually(lambda: offset(d) == 3)
        all_sent(d, 1)
        assert texts(d) == ["Hello, Ann!"]


def test_emulator_get_updates_as_telegram():
    """The emulator itself: offsets confirm, a negative offset keeps the
    last ones, limit, timeout, and 409 for a webhook or a newer poll."""
    import threading
    from harness import TOKEN
    import botapi_emu
    emu = botapi_emu.Emulator(TOKEN).start()
    try:
        def call(**params):
            req = urllib.request.Request(
                "%s/bot%s/getUpdates" % (emu.url, TOKEN),
                data=json.dumps(params).encode(),
                headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                return json.loads(e.read())
        ids = [emu.push_update(message("m", i)) for i in range(1, 6)]
        assert ids == [1, 2, 3, 4, 5]
        got = call(limit=2)
        assert [u["update_id"] for u in got["result"]] == [1, 2]
        got = call(offset=3)                    # confirms 1 and 2
        assert [u["update_id"] for u in got["result"]] == [3, 4, 5]
        assert emu.pending_updates() == [3, 4, 5]
        got = call(offset=-1)                   # only the last is kept
        assert [u["update_id"] for u in got["result"]] == [5]
        assert emu.pending_updates() == [5]
        got = call(offset=6)
        assert got["result"] == []
        t0 = time.time()
        assert call(offset=6, timeout=1)["result"] == []
        assert time.time() - t0 >= 0.9
        # a long poll answered as soon as an update comes
        threading.Timer(0.3, emu.push_update,
                        [message("late", 6)]).start()
        t0 = time.time()
        got = call(offset=6, timeout=10)
        assert [u["update_id"] for u in got["result"]] == [6]
        assert time.time() - t0 < 5
        # a newer poll ends the older one with 409
        older = {}
        t = threading.Thread(target=lambda: older.update(
            call(offset=7, timeout=10)))
        t.start()
        assert eventually(lambda: emu.polls_active == 1)
        call(offset=7)
        t.join(5)
        assert older["error_code"] == 409
        assert "terminated by other getUpdates request" in \
            older["description"]
        # allowed_updates is kept from call to call
        emu.push_update({"update_id": 7, "callback_query": {"id": "1"}})
        emu.push_update(message("m", 8))
        got = call(offset=7, allowed_updates=["message"])
        assert [u["update_id"] for u in got["result"]] == [8]
        emu.webhook = dict(WEBHOOK)
        got = call(offset=9)
        assert got["error_code"] == 409
        assert "while webhook is active" in got["description"]
    finally:
        emu.stop()


def calls_polling_daemon(n):
    """A polling daemon, not started, whose only handler (exec) makes n
    sendMessage calls to the update's chat."""
    d = polling_daemon("", start=False)
    with open(d.conf, "a") as f:
        f.write("[handler.calls]\nexec = %s\n" % calls_script(d, n))
    return d


def test_the_inline_call_goes_out_first_as_a_follow_up():
    d = calls_polling_daemon(3)
    with d:
        d.start()
        d.emu.push_update(message("x", 5))
        d.emu.wait_calls("sendMessage", 3)
        # what a webhook would have answered inline comes first
        assert texts(d) == ["m5-1", "m5-2", "m5-3"]
        d.wait_log("update 5: message: handler calls: 3 follow-ups")
        assert "dropped" not in d.log()


def test_text_rule_reads_a_rich_messages_text():
    from harness import corpus
    handlers = ("[handler.report]\ntext = Sales are up 5%\nreply = seen\n"
                "[handler.rest]\nreply = other\n")
    with polling_daemon(handlers) as d:
        d.emu.push_update(corpus("200-rich-message.json"))
        d.emu.push_update(message("Weekly report, please", 2))
        d.emu.wait_calls("sendMessage", 2)
        assert texts(d) == ["seen", "other"]


GATED = """#!/usr/bin/env python3
import json, os, sys, time
m = json.load(sys.stdin)["message"]
gate = os.path.join(os.path.dirname(sys.argv[0]), "go")
for _ in range(3000):
    if os.path.exists(gate):
        break
    time.sleep(0.01)
print(json.dumps({"method": "sendMessage", "chat_id": m["chat"]["id"],
                  "text": "re " + m["text"]}))
"""


def test_update_waiting_for_its_chat_is_held_and_the_batch_goes_on():
    """reply_deadline is 0 with polling: an update waiting behind a slow
    one of its chat is held at once, so the offset passes both while the
    slow handler still runs and another chat is answered; the chat then
    gets its answers in order."""
    d = polling_daemon("", start=False)
    slow = script(d, "slow", GATED)
    with open(d.conf, "a") as f:
        f.write("[handler.slow]\ntext = ^slow\nexec = %s\n"
                "[handler.any]\nreply = re {text}\n" % slow)
    with d:
        d.emu.push_update(message("slow", 1))
        d.emu.push_update(message("fast", 2))
        d.emu.push_update(message("other", 3, chat_id=43))
        d.start()
        d.wait_log("update 2: still waiting for an earlier update of its "
                   "conversation at reply_deadline (0ms): answered 200")
        # both durable (held) before the slow one is done: the offset
        # has passed them, and chat 43 did not wait for chat 42
        assert eventually(lambda: offset(d) == 4)
        d.emu.wait_calls("sendMessage", 1)
        db = sqlite3.connect(os.path.join(d.store, "tgwebhookd.db"))
        try:
            held = [r[0] for r in db.execute(
                "SELECT update_id FROM held_updates ORDER BY update_id")]
        finally:
            db.close()
        assert held == [1, 2], held
        assert texts(d) == ["re other"]
        open(os.path.join(d.dir, "go"), "w").close()
        d.emu.wait_calls("sendMessage", 3)
        assert [c.params["text"] for c in d.emu.calls_of("sendMessage")
                if c.params["chat_id"] == 42] == ["re slow", "re fast"]
        d.wait_log("update 2: message: handler any: 1 follow-up")
        assert all_sent(d, 3)


def test_a_batch_reads_the_state_its_earlier_update_committed():
    """One getUpdates batch holds a whole form for one user and an update
    of another chat: the follow-ups of a batch are committed together, but
    a state is committed at once with its calls, so each step of the form
    reads the one before it; the chat's answers come in order."""
    from test_state import form_handlers
    d = polling_daemon(form_handlers(), start=False)
    with d:
        for i, text in enumerate(["/form", "Ann", "41"], 1):
            d.emu.push_update(message(text, i))
        d.emu.push_update(message("/form", 4, chat_id=43, user_id=9))
        d.start()
        assert eventually(lambda: offset(d) == 5)
        d.emu.wait_calls("sendMessage", 4)
        assert [c.params["text"] for c in d.emu.calls_of("sendMessage")
                if c.params["chat_id"] == 42] == [
            "What is your name?", "Hello, Ann. How old are you?",
            "Ann, 41: is that right? (yes/no)"]
        assert all_sent(d, 4)
        # one batch: every update was in the first getUpdates' answer
        assert [c.params.get("offset") for c in
                d.emu.calls_of("getUpdates")][:2] == [0, 5]


def retried(d):
    """Updates answered busy so far (/metrics)."""
    m = re.search(r'tgwebhookd_updates_total\{type="message",result="retry"\}'
                  r' (\d+)', admin(d, "/metrics")[1])
    return int(m.group(1)) if m else 0


def test_a_batch_whose_commit_fails_is_answered_busy_whole():
    """Every write of the store fails (as on a full disk) while a batch is
    handled: nothing of it is sent, the offset stays, and the updates are
    asked for again and handled then, each once: not taken for
    duplicates of themselves."""
    from test_faults import set_fsize
    d = polling_daemon()
    with d:
        d.wait_log("polling getUpdates from offset")
        assert eventually(lambda: d.emu.calls_of("getUpdates"))
        set_fsize(d.proc.pid, 1)
        try:
            for i in range(1, 4):
                d.emu.push_update(message("/start", i, chat_id=100 + i))
            # handled, then all three not taken (the log cannot be
            # written either: the metrics say it)
            assert eventually(lambda: retried(d) >= 3, timeout=30)
            assert d.emu.calls_of("sendMessage") == []
            assert offset(d) in (None, 0, 1)
        finally:
            set_fsize(d.proc.pid, "unlimited")
        assert eventually(lambda: offset(d) == 4, timeout=30)
        sent = all_sent(d, 3)
        assert sorted(c.params["chat_id"] for c in sent) == [101, 102, 103]
        assert "already handled" not in d.log()


class StoreLocked:
    """Holds the store's write lock (a transaction of the test's own),
    so that every commit of the daemon waits for it and fails after its
    busy timeout."""

    def __init__(self, d):
        self.db = sqlite3.connect(os.path.join(d.store, "tgwebhookd.db"),
                                  isolation_level=None)
        self.db.execute("BEGIN IMMEDIATE")

    def release(self):
        self.db.execute("COMMIT")
        self.db.close()


SLOW_PLUGIN = r'''
#include <unistd.h>
#include <tgwebhookd.h>
static int
h(void *s, const struct tgw_update *u, struct tgw_reply *r)
{
	(void)s; (void)u;
	usleep(1500 * 1000);
	return tgw_reply_text(r, "slow done");
}
TGW_PLUGIN(0, 0, h, 0);
'''


def test_a_failed_batch_commit_keeps_what_was_committed_before_it():
    """A batch holds a form's three steps (each committed at once, with
    its state) and a quick update of another chat whose follow-up waits
    for the batch's commit, which fails (the store locked past its busy
    timeout). Only that last update is asked for again: the form's steps
    are durable and are not run a second time against a later state."""
    from harness import compile_plugin
    from test_state import form_handlers
    d = polling_daemon("", start=False)
    with d:
        so = compile_plugin(d, "slow", SLOW_PLUGIN)
        with open(d.conf, "a") as f:
            f.write("[handler.slow]\nplugin = %s\ncommands = /slow\n" % so)
            f.write(form_handlers())
        for i, text in enumerate(["/form", "Ann", "41"], 1):
            d.emu.push_update(message(text, i))
        d.emu.push_update(message("/slow", 4, chat_id=43, user_id=9))
        d.start()
        d.wait_log("update 3: message: handler ")
        lock = StoreLocked(d)    # while the plugin runs
        try:
            d.wait_log("1 update(s) of a getUpdates batch are not taken",
                       timeout=30)
        finally:
            lock.release()
        assert eventually(lambda: offset(d) == 5, timeout=30)
        sent = all_sent(d, 4)
        assert [c.params["text"] for c in sent
                if c.params["chat_id"] == 42] == [
            "What is your name?", "Hello, Ann. How old are you?",
            "Ann, 41: is that right? (yes/no)"]
        assert [c.params["text"] for c in sent
                if c.params["chat_id"] == 43] == ["slow done"]
        log = d.log()
        for i in (1, 2, 3):
            assert log.count("update %d: message: handler" % i) == 1, log
        assert "already handled" not in log


def test_a_job_after_a_failed_batch_commit_waits_with_its_chat():
    """A quick update's follow-up waits in the batch; the chat's next
    update goes to a handler thread (exec), so the batch is committed
    first, and that commit fails (the store locked). The job is not
    started: both are asked for again and the chat's answers come in
    their order."""
    d = polling_daemon("", start=False)
    with d:
        sh = os.path.join(d.dir, "second.sh")
        with open(sh, "w") as f:
            f.write("#!/bin/sh\ncat >/dev/null\necho '{\"method\":"
                    "\"sendMessage\",\"chat_id\":42,\"text\":\"second\"}'\n")
        os.chmod(sh, 0o755)
        with open(d.conf, "a") as f:
            f.write("[handler.first]\ncommands = /first\nreply = first\n")
            f.write("[handler.second]\ncommands = /second\nexec = %s\n" % sh)
        d.start()
        d.wait_log("polling getUpdates from offset")
        assert eventually(lambda: d.emu.calls_of("getUpdates"))
        lock = StoreLocked(d)
        try:
            d.emu.push_update(message("/first", 1))
            d.emu.push_update(message("/second", 2))
            d.wait_log("update 2: answering 503 so that Telegram retries "
                       "later, with the earlier updates of its batch",
                       timeout=30)
        finally:
            lock.release()
        assert eventually(lambda: offset(d) == 3, timeout=30)
        sent = all_sent(d, 2)
        assert [c.params["text"] for c in sent] == ["first", "second"]


def test_outcomes_the_store_refused_are_written_once_it_takes_them():
    """Three follow-ups to one chat go a second apart (Telegram's limit
    for a chat). The store is locked after the first is delivered, until
    the mark of a call delivered meanwhile cannot be written: it is kept
    and written once the lock is gone. The store then says all three
    delivered (not pending, to be sent again at the next start), and each
    went once."""
    d = calls_polling_daemon(3)
    with d:
        d.start()
        d.emu.push_update(message("x", 5))
        d.emu.wait_calls("sendMessage", 1)
        lock = StoreLocked(d)
        try:
            # the next call goes a second later, its mark refused (each
            # of the sender's statements waits out the busy timeout)
            d.wait_log("are kept and written again once the store takes "
                       "them", timeout=60)
        finally:
            lock.release()
        d.wait_log("outbox: the store takes outcomes again", timeout=30)
        assert all_sent(d, 3)
        assert texts(d) == ["m5-1", "m5-2", "m5-3"]
