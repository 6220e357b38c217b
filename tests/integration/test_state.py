"""Conversation state: the configuration-only form of conf/form.conf
played through the emulator, each user's own state, a redelivery after
the commit, SIGKILL before the commit, and expiry."""

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time

from harness import (Daemon, binary, compile_plugin, dead_letters,
                     eventually, message, settle, texts)

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


# ---- code handlers: state_io = on ----

# An exec handler counting per conversation: it reads the state from the
# environment and prints a new one beside its reply; the message text
# picks a bad state instead.  Without TGW_STATE (state_io off) it says so.
COUNTER = r'''#!/usr/bin/python3
import json, os, sys
u = json.load(sys.stdin)
chat = u["message"]["chat"]["id"]
text = u["message"].get("text", "")
if "TGW_STATE" not in os.environ:
    print(json.dumps({"method": "sendMessage", "chat_id": chat,
                      "text": "no state"}))
    print(json.dumps({"state": {"name": "counting"}}))
    sys.exit()
blocker = os.path.join(os.path.dirname(sys.argv[0]), "block")
if text == "slow":
    import time
    time.sleep(0.3)                   # both updates of a race run at once
if text == "block" and os.path.exists(blocker):
    with open(blocker + ".pid", "w") as f:
        f.write(str(os.getpid()))
    os.kill(os.getpid(), 19)          # SIGSTOP: stays until killed
name = os.environ["TGW_STATE"]
data = json.loads(os.environ["TGW_STATE_DATA"])
n = data.get("n", 0) + 1
print(json.dumps({"method": "sendMessage", "chat_id": chat,
                  "text": "%s %d" % (name or "none", n)}))
if text == "badname":
    print(json.dumps({"state": {"name": "two words"}}))
elif text == "baddata":
    print(json.dumps({"state": {"name": "x", "data": [1]}}))
elif text == "big":
    print(json.dumps({"state": {"name": "x", "data": {"s": "x" * 70000}}}))
elif text == "deep":                  # deeper than SQLite's json_valid()
    print('{"state": {"name": "x", "data": %s}}'
          % ('{"a":' * 2040 + '{}' + '}' * 2040))
elif text == "twice":
    print('{"state": null}\n{"state": null}')
elif text == "clear":
    print('{"state": null}')
else:
    print(json.dumps({"state": {"name": "counting", "data": {"n": n}}}))
'''


def counter_daemon(state_io="on", kind="exec", source=COUNTER, extra=""):
    d = Daemon("", start=False, extra=extra)
    path = os.path.join(d.dir, "counter")
    with open(path, "w") as f:
        f.write(source)
    os.chmod(path, 0o700)
    with open(d.conf, "a") as f:
        f.write("[handler.counter]\nupdates = message\n%s = %s\n%s" % (
            kind, path, "state_io = %s\n" % state_io if state_io else ""))
    d.start()
    return d


def test_exec_state_io():
    with counter_daemon() as d:
        assert say(d, "a", 1) == "none 1"
        assert say(d, "b", 2) == "counting 2"
        assert eventually(lambda: states(d) == [
            ("c42:u7", "counting", '{"n":2}')]), states(d)
        # another user of the chat counts on their own
        assert say(d, "c", 3, user_id=8) == "none 1"
        # bad state output: a dead letter saying why, nothing committed
        for i, (text, why) in enumerate([
                ("badname", "bad state: its name must be null or 1-64"),
                ("baddata", "bad state: its data must be a JSON object"),
                ("twice", "a second state object (one per update)"),
                ("big", "its state's data would be over 65536 bytes"),
                ("deep", "bad state: its data nests more than 100 levels")]):
            status = d.deliver(message(text, 10 + i))[0]
            assert status == 200
            assert eventually(lambda: len(dead_letters(d)) == i + 1)
            reason = dead_letters(d)[i][2]
            assert why in reason, reason
        assert ("c42:u7", "counting", '{"n":2}') in states(d)
        assert say(d, "d", 20) == "counting 3"
        assert say(d, "clear", 21) == "counting 4"
        # cleared: kept only as the mark of the update that cleared it
        assert eventually(lambda: ("c42:u7", "", "{}") in states(d)), \
            states(d)
        assert say(d, "e", 22) == "none 1"
        assert texts(d).count("counting 4") == 1


def test_exec_without_state_io_is_unchanged():
    """Without the key the handler sees no state, and a state object in
    its output is what it always was: an object with no method."""
    with counter_daemon(state_io=None) as d:
        assert d.deliver(message("a", 1))[0] == 200
        assert eventually(lambda: dead_letters(d))
        assert "call 2: a call needs \"method\"" in dead_letters(d)[0][2]
        assert states(d) == []


def test_state_io_must_be_on_or_off():
    d = Daemon("[handler.x]\nexec = /bin/cat\nstate_io = yes\n",
               start=False)
    try:
        out = subprocess.run([binary(), "-c", d.conf, "-t"],
                             capture_output=True, env=d.env, timeout=20)
        line = 1 + open(d.conf).read().split("state_io = yes")[0].count(
            "\n")
        assert out.returncode == 1
        assert ("%s:%d: state_io: 'yes' is not on or off" % (d.conf, line)
                in out.stderr.decode()), out.stderr.decode()
    finally:
        d.close()


WORKER = r'''#!/usr/bin/python3
import json, sys
for line in sys.stdin:
    env = json.loads(line)
    u, st = env["update"], env["state"]
    chat = u["message"]["chat"]["id"]
    text = u["message"]["text"]
    n = st["data"].get("n", 0) + 1
    out = [{"method": "sendMessage", "chat_id": chat,
            "text": "%s %d" % (st["name"] or "none", n)}]
    if text == "bad":
        out.append({"state": {"name": "none"}})
    else:
        out.append({"state": {"name": "counting", "data": {"n": n}}})
    print(json.dumps(out), flush=True)
'''


def test_worker_state_io():
    with counter_daemon(kind="worker", source=WORKER) as d:
        assert say(d, "a", 1) == "none 1"
        assert say(d, "b", 2) == "counting 2"
        assert d.deliver(message("bad", 3))[0] == 200
        assert eventually(lambda: dead_letters(d))
        assert "bad answer: bad state: its name" in dead_letters(d)[0][2]
        # the worker stays, and the state is as the last good answer left it
        assert say(d, "c", 4) == "counting 3"
        assert eventually(lambda: states(d) == [
            ("c42:u7", "counting", '{"n":3}')]), states(d)


PLUGIN = r'''
#include <string.h>
#include <tgwebhookd.h>

#if TGW_ABI_MINOR < 1
#error no conversation state in this tgwebhookd.h
#endif

static int
handle(void *state, const struct tgw_update *u, struct tgw_reply *r)
{
	const json_t *data = tgw_state_data(u);
	const char *name = tgw_state_name(u), *text = tgw_update_text(u, NULL);
	json_int_t n;
	char out[128];

	(void)state;
	if (data == NULL)
		return tgw_reply_text(r, "no state");
	n = json_integer_value(json_object_get(data, "n")) + 1;
	if (strcmp(text, "bad") == 0)
		return tgw_reply_state(r, "a b", NULL) == -1 ? 0 : -1;
	if (tgw_reply_state(r, "counting", json_pack("{sI}", "n", n)) == -1)
		return -1;
	/* what was read stays as it was */
	snprintf(out, sizeof(out), "%s %lld %lld", name ? name : "none",
	    (long long)n, (long long)json_integer_value(json_object_get(
	    tgw_state_data(u), "n")));
	return tgw_reply_text(r, out);
}

TGW_PLUGIN(0, NULL, handle, NULL);
'''


def test_plugin_state_io():
    d = Daemon("", start=False)
    try:
        so = compile_plugin(d, "counter", PLUGIN)
        with open(d.conf, "a") as f:
            f.write("[handler.counter]\nplugin = %s\nstate_io = on\n" % so)
        d.start()
        assert say(d, "a", 1) == "none 1 0"
        assert say(d, "b", 2) == "counting 2 1"
        # a bad state fails the update, whatever handle() returns
        assert d.deliver(message("bad", 3))[0] == 200
        assert eventually(lambda: dead_letters(d))
        assert "tgw_reply_state(): the name is not" in dead_letters(d)[0][2]
        assert eventually(lambda: states(d) == [
            ("c42:u7", "counting", '{"n":2}')]), states(d)
        d.stop()
        # without state_io the plugin reads no state
        text = open(d.conf).read().replace("state_io = on\n", "")
        open(d.conf, "w").write(text)
        d.start()
        status, _, _, body = d.deliver(message("c", 4))
        assert json.loads(body)["text"] == "no state"
    finally:
        d.close()


# ---- the operator's commands ----

def ops(d, *args):
    out = subprocess.run([binary(), "-c", d.conf] + list(args),
                         capture_output=True, env=d.env, timeout=20)
    return out.returncode, out.stdout.decode(), out.stderr.decode()


def test_operator_shows_and_resets_states_while_the_daemon_runs():
    with Daemon(form_handlers()) as d:
        assert say(d, "/form", 1) == "What is your name?"
        # a name with a bidi override and an escape sequence: shown escaped
        assert say(d, "Ann\u202e\x1b[2J", 2).startswith("Hello, Ann")
        assert say(d, "/form", 3, user_id=8) == "What is your name?"
        rc, out, err = ops(d, "--state", "42", "7")
        assert rc == 0, err
        lines = out.splitlines()
        assert lines[0] == "state of c42:u7: awaiting_age", out
        # ESC is escaped by JSON already, U+202E by the command
        assert lines[1] == '  data: {"name":"Ann\\u202e\\u001B[2J"}', out
        assert lines[2].startswith("  expires: ") and "UTC (in 2" in \
            lines[2], out       # ttl = 1d: in 23h or 24h
        assert lines[3] == "  written by update 2", out
        assert "\x1b" not in out and "\u202e" not in out
        # the chat alone (a channel's key under chat_user): none
        assert ops(d, "--state", "42")[1] == "state of c42: none\n"
        rc, _, err = ops(d, "--state", "x42")
        assert rc == 2 and "--state x42: 'x42' is not a chat id" in err, err
        # reset one: that user starts over, the other goes on
        rc, out, err = ops(d, "--state-reset", "42", "7")
        assert (rc, out) == (0, "state of c42:u7 reset\n"), (out, err)
        assert ops(d, "--state", "42", "7")[1] == "state of c42:u7: none\n"
        assert say(d, "41", 4) == "Send /form to fill in the form."
        assert say(d, "Bob", 5, user_id=8) == "Hello, Bob. How old are you?"
        rc, out, err = ops(d, "--state-reset", "all")
        assert (rc, out) == (0, "1 state(s) reset\n"), (out, err)
        assert states(d) == []
        assert say(d, "41", 6, user_id=8) == \
            "Send /form to fill in the form."


def test_operator_key_follows_state_scope():
    text = form_handlers().replace("state_scope = chat_user",
                                   "state_scope = user")
    assert "state_scope = user" in text
    with Daemon(text) as d:
        assert say(d, "/form", 1) == "What is your name?"
        rc, out, _ = ops(d, "--state", "-", "7")
        assert out == "state of u7: awaiting_name\n  data: {}\n" \
            "  expires: " + out.split("expires: ")[1], out
        rc, _, err = ops(d, "--state", "42", "7")
        assert rc == 2 and "state_scope = user keys a conversation by " \
            "its user alone: give - USER" in err, err


# ---- /metrics ----

def metric(d, name):
    import urllib.request
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % d.admin_port,
                                timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_metrics_count_states_by_name_and_expiries():
    # a ttl long enough to see the states counted (at most a second after
    # they change) before they expire
    with Daemon(form_handlers(ttl="5s")) as d:
        # the names are the configuration's: known before any state
        assert metric(d, 'tgwebhookd_states{name="awaiting_age"}') == 0
        assert metric(d, 'tgwebhookd_states{name="other"}') == 0
        assert metric(d, "tgwebhookd_state_expiries_total") == 0
        assert say(d, "/form", 1) == "What is your name?"
        assert say(d, "/form", 2, user_id=8) == "What is your name?"
        assert eventually(lambda: metric(
            d, 'tgwebhookd_states{name="awaiting_name"}') == 2)
        # a name no key of the configuration uses is "other"
        db = sqlite3.connect(os.path.join(d.store, "tgwebhookd.db"))
        db.execute("INSERT INTO states(key, name, data) VALUES "
                   "('c1', 'made_by_code', '{}')")
        db.commit()
        db.close()
        assert say(d, "Ann", 3) == "Hello, Ann. How old are you?"
        assert eventually(lambda: metric(
            d, 'tgwebhookd_states{name="awaiting_age"}') == 1)
        assert metric(d, 'tgwebhookd_states{name="other"}') == 1
        assert metric(d, 'tgwebhookd_states{name="made_by_code"}') is None
        # past the ttl the form states no longer count (not a
        # synchronisation: the states' lifetime has to pass) ...
        time.sleep(5.2)
        assert say(d, "/form", 4, user_id=9) == "What is your name?"
        assert eventually(lambda: metric(
            d, 'tgwebhookd_states{name="awaiting_age"}') == 0)
        assert metric(d, 'tgwebhookd_states{name="awaiting_name"}') == 1
        # ... and are deleted and counted at the outbox's pruning, whose
        # first comes a minute after the start: by then the third user's
        # state has expired as well
        assert eventually(lambda: metric(
            d, "tgwebhookd_state_expiries_total") == 3, 90), \
            metric(d, "tgwebhookd_state_expiries_total")
        d.wait_log("outbox: 3 conversation state(s) expired")


# ---- atomic and ordered ----

def test_two_updates_of_a_chat_at_the_same_moment_on_two_connections():
    """Both are handled, one after the other: the second reads the state
    the first committed (at once, both would read none and count 1)."""
    with counter_daemon() as d:
        w = d.emu.webhook
        path = "/" + w["url"].split("/", 3)[3]
        conns = [d.emu._connect() for _ in range(2)]
        for c in conns:
            c.connect()       # both open before either request
        start = threading.Barrier(2)
        status, errors = [], []

        def client(i, conn):
            try:
                start.wait()
                conn.request("POST", path, body=json.dumps(
                    message("slow", 1 + i)), headers={
                        "X-Telegram-Bot-Api-Secret-Token": w["secret"],
                        "Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                status.append(resp.status)
            except Exception as e:   # reported below
                errors.append(repr(e))
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(i, c))
                   for i, c in enumerate(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors and status == [200, 200], (errors, status)
        d.emu.wait_calls("sendMessage", 2)
        assert texts(d) == ["none 1", "counting 2"], texts(d)
        assert eventually(lambda: [r[:3] for r in states(d)] == [
            ("c42:u7", "counting", '{"n":2}')]), states(d)
        # the second waited for the first: its turn came when the first's
        # state was committed
        assert "ms for an earlier update of chat 42" in d.log()


def test_sigkill_between_the_handler_and_the_commit():
    """The daemon dies while the handler of update 2 runs: after the
    restart the state is the old one and no call of the killed run went
    out; Telegram's redelivery (or the replay of the held update) is then
    handled once, from the old state."""
    with counter_daemon() as d:
        assert say(d, "a", 1) == "none 1"
        assert eventually(lambda: states(d) == [
            ("c42:u7", "counting", '{"n":1}')]), states(d)
        blocker = os.path.join(d.dir, "block")
        open(blocker, "w").close()
        t = threading.Thread(target=lambda: _try(d.deliver,
                                                 message("block", 2)))
        t.start()
        pid = eventually(lambda: os.path.exists(blocker + ".pid") and
                         open(blocker + ".pid").read())
        assert pid, d.log()
        d.kill()
        os.kill(int(pid), signal.SIGKILL)   # its process group stays
        t.join(30)
        assert states(d) == [("c42:u7", "counting", '{"n":1}')]
        assert texts(d) == ["none 1"]
        os.unlink(blocker)
        d.start()
        _try(d.deliver, message("block", 2))
        d.emu.wait_calls("sendMessage", 2)
        assert eventually(lambda: states(d) == [
            ("c42:u7", "counting", '{"n":2}')]), states(d)
        # a second redelivery is not handled again either
        _try(d.deliver, message("block", 2))
        settle(d)
        assert texts(d) == ["none 1", "counting 2"], texts(d)
        assert dead_letters(d) == []


def _try(f, *args):
    """f(*args), or None if the connection broke (the daemon was
    killed)."""
    try:
        return f(*args)
    except OSError:
        return None


def test_form_bot_example():
    """examples/form-bot: the form as an exec handler with state_io."""
    src = os.path.join(HERE, "..", "..", "examples", "form-bot")
    with counter_daemon(source=open(src).read()) as d:
        assert say(d, "/form", 1) == "What is your name?"
        assert say(d, "Ann", 2) == "Hello, Ann. How old are you?"
        assert say(d, "old", 3) == "Please send your age as a number."
        assert say(d, "41", 4) == "Ann, 41: is that right? (yes/no)"
        assert eventually(lambda: states(d) == [
            ("c42:u7", "confirm", '{"name":"Ann","age":41}')]), states(d)
        assert say(d, "yes", 5) == "Thank you, Ann. Saved."
        assert say(d, "hi", 6) == "Send /form to fill in the form."
        assert dead_letters(d) == []
