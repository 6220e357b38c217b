"""The getUpdates source: the same pipeline as the webhook, offsets kept
in the store and moved only past durable updates, 409 both ways and the
takeover, 429 and garbage answers, SIGTERM during a long poll, SIGKILL in
the middle of a batch, restarts, one chat's order, reloads, and switching
between webhook and polling."""

import json
import os
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
