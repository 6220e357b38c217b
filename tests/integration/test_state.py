"""Conversation state: the configuration-only form of conf/form.conf
played through the emulator, each user's own state, a redelivery after
the commit, SIGKILL before the commit, and expiry."""

import json
import os
import sqlite3
import time

from harness import Daemon, eventually, message, texts

HERE = os.path.dirname(os.path.abspath(__file__))
FORM = os.path.join(HERE, "..", "..", "conf", "form.conf")


def form_handlers(ttl=None):
    """conf/form.conf from its [state] section on (the test's own [bot],
    [webhook] and [store] come first)."""
    with open(FORM) as f:
        text = f.read()
    text = text[text.index("\n[state]\n") + 1:]
    if ttl is not None:
        text = text.replace("ttl = 1d", "ttl = %s" % ttl)
    return text


def states(d):
    db = sqlite3.connect(os.path.join(d.store, "tgwebhookd.db"))
    try:
        return db.execute("SELECT key, name, data FROM states ORDER BY key"
                          ).fetchall()
    finally:
        db.close()


def say(d, text, update_id, **kw):
    """Delivers a message; returns the text of its reply: inline in the
    webhook's answer (no state change) or, with a new state, the
    follow-up committed with it."""
    before = len(d.emu.calls_of("sendMessage"))
    status, _, _, body = d.deliver(message(text, update_id, **kw))
    assert status == 200
    if body:
        return json.loads(body)["text"]
    return d.emu.wait_calls("sendMessage", before + 1)[before].params["text"]


def test_form_played_through():
    with Daemon(form_handlers()) as d:
        assert say(d, "/form", 1) == "What is your name?"
        assert say(d, "Ann", 2) == "Hello, Ann. How old are you?"
        assert say(d, "old", 3) == "Please send your age as a number."
        assert say(d, "41", 4) == "Ann, 41: is that right? (yes/no)"
        # another user of the same chat has a state of their own
        assert say(d, "41", 5, user_id=8) == \
            "Send /form to fill in the form."
        assert eventually(lambda: ("c42:u7", "confirm",
                                   '{"name":"Ann","age":"41"}')
                          in states(d)), states(d)
        assert say(d, "yes", 6) == "Thank you, Ann. Saved."
        assert say(d, "yes", 7) == "Send /form to fill in the form."
        d.wait_log("update 7: message: handler other")


def test_state_survives_restart_and_redelivery_is_not_handled_twice():
    with Daemon(form_handlers()) as d:
        assert say(d, "/form", 1) == "What is your name?"
        assert eventually(lambda: states(d) == [
            ("c42:u7", "awaiting_name", "{}")]), states(d)
        d.stop()
        d.start()
        # Telegram redelivers update 1 (its answer was lost): the state
        # it wrote is committed, so it is not handled again (handled in
        # the new state it would save "/form" as the name); the in-memory
        # dedup is gone with the restart, the store still knows
        status = d.deliver(message("/form", 1))[0]
        assert status == 200
        d.wait_log("update 1: already handled: its state and calls were "
                   "committed")
        assert states(d) == [("c42:u7", "awaiting_name", "{}")]
        # and the next message goes on from the kept state
        assert say(d, "Ann", 2) == "Hello, Ann. How old are you?"
        assert texts(d) == ["What is your name?",
                            "Hello, Ann. How old are you?"]


def test_state_expires():
    with Daemon(form_handlers(ttl="1s")) as d:
        assert say(d, "/form", 1) == "What is your name?"
        row = eventually(lambda: states(d))
        assert row and row[0][1] == "awaiting_name", row
        # not a synchronisation: the state's lifetime has to pass
        time.sleep(1.2)
        assert say(d, "Ann", 2) == "Send /form to fill in the form."


def test_failed_commit_leaves_the_old_state_and_no_calls():
    """As a crash before the commit: the store takes nothing (every write
    fails, as on a full disk), so the update gets 503, its state stays
    the old one and no call goes out; Telegram's retry then goes on from
    the old state."""
    from test_faults import set_fsize
    with Daemon(form_handlers()) as d:
        assert say(d, "/form", 1) == "What is your name?"
        assert eventually(lambda: states(d) == [
            ("c42:u7", "awaiting_name", "{}")]), states(d)
        set_fsize(d.proc.pid, 1)
        status, _, _, body = d.deliver(message("Ann", 2))
        assert status == 503 and body == b"", (status, body)
        assert states(d) == [("c42:u7", "awaiting_name", "{}")]
        set_fsize(d.proc.pid, "unlimited")
        assert say(d, "Ann", 2) == "Hello, Ann. How old are you?"
        assert eventually(lambda: states(d) == [
            ("c42:u7", "awaiting_age", '{"name":"Ann"}')]), states(d)
        assert texts(d) == ["What is your name?",
                            "Hello, Ann. How old are you?"]
