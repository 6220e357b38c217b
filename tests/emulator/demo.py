"""make demo: Telegram's Hello Bot as configuration, run offline, with the
other handler kinds beside it.

Starts the Bot API emulator and tgwebhookd with conf/hello.conf (api_url,
listen and the store pointed at the emulator, a free port and a temporary
directory) plus four handlers the demo adds in front: /about (an exec
script), /roll and its buttons (the dice C plugin) and /poll (the Simple
Poll bot, a Python worker).  The emulator plays Telegram: registration
with the uploaded certificate, then a short conversation (messages and
button presses) delivered over TLS that trusts only that certificate.
Prints what came in, what was answered inline and what went out as a
follow-up.  Then the same daemon and handlers again with source = polling:
the Simple Poll bot over long polling (getUpdates), where every call is a
follow-up.  Then conf/form.conf, a multi-step form in configuration
alone (conversation state), with the operator's --state on the way.  Then
stops everything."""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import botapi_emu  # noqa: E402

TOKEN = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"   # Telegram's example
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))




def set_key(text, key, value):
    return re.sub(r"(?m)^%s\s*=.*$" % re.escape(key),
                  "%s = %s" % (key, value), text, count=1)


def short(s, n=70):
    return s if len(s) <= n else s[:n - 1] + "…"


def describe(call):
    text = call.get("text")
    out = "%s" % call.get("method")
    if text is not None:
        out += ': "%s"' % short(" / ".join(
            line for line in text.split("\n") if line))
    markup = call.get("reply_markup")
    if isinstance(markup, str):
        markup = json.loads(markup)
    for kind in ("keyboard", "inline_keyboard"):
        if markup and kind in markup:
            out += "  %s: " % kind.replace("_", " ") + " ".join(
                "[%s]" % b if isinstance(b, str) else "[%s]" % b.get("text")
                for row in markup[kind] for b in row)
    if markup and markup.get("remove_keyboard"):
        out += "  (keyboard removed)"
    return out


def polling_phase(args, conf, text, emu, env, log, ann, chat):
    """The same configuration with source = polling: the Simple Poll bot
    over getUpdates.  Returns the daemon's exit code."""
    text = text.replace("[bot]\n", "[bot]\nsource = polling\n", 1)
    # the webhook set above must go: deleted once at start (takeover)
    text += "\n[polling]\ntimeout = 5s\ntakeover = on\n"
    with open(conf, "w") as f:
        f.write(text)
    print("\n[polling] the same handlers with source = polling: no listener, "
          "no certificate;\n          tgwebhookd asks the emulator for "
          "updates (getUpdates), so every call is a follow-up")
    proc = subprocess.Popen([args.daemon, "-c", conf], stdout=log,
                            stderr=log, env=env)
    try:
        emu.wait_calls("deleteWebhook", 1, timeout=20)
        print("[polling] takeover = on: deleteWebhook (pending updates "
              "kept), then getUpdates\n")

        def press(data):
            return {"callback_query": {
                "id": "cq%d" % time.time_ns(), "from": ann,
                "chat_instance": "1", "data": data,
                "message": {"message_id": emu.message_id,
                            "date": int(time.time()), "chat": chat,
                            "text": "(the bot's message)"}}}
        said = "/poll Dinner? | Curry | Tacos"
        steps = [({"message": {"message_id": 100, "from": ann, "chat": chat,
                               "date": int(time.time()), "text": said,
                               "entities": [{"offset": 0, "length": 5,
                                             "type": "bot_command"}]}},
                  said, "sendMessage"),
                 (None, "[presses Tacos]", "editMessageText", "poll:1:1"),
                 (None, "[presses Close]", "editMessageText", "poll:1:close")]
        for step in steps:
            update = step[0] if step[0] is not None else press(step[3])
            before = len(emu.calls)
            seen = len(emu.calls_of(step[2]))
            emu.push_update(update)
            print("Ann   -> bot  %s" % step[1])
            emu.wait_calls(step[2], seen + 1, timeout=15)
            for c in emu.calls[before:]:
                if c.method != "getUpdates":
                    print("  follow-up  %s" % describe(dict(
                        c.params, method=c.method)))
        print()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
        print("[stop]    SIGTERM: the poll ended at once; tgwebhookd exited "
              "%d" % rc)
        return rc
    except Exception:
        proc.kill()
        proc.wait()
        raise


def form_phase(args, emu, tmp, env, log, ann, chat):
    """conf/form.conf, the multi-step form in configuration alone: its
    replies that move the conversation to another state are follow-ups,
    committed with the state.  Returns the daemon's exit code."""
    port = botapi_emu.free_port()
    emu.forward = ("127.0.0.1", port)
    with open(args.form) as f:
        text = f.read()
    text = set_key(text, "api_url", emu.url)
    text = set_key(text, "listen", "127.0.0.1:%d" % port)
    text = set_key(text, "dir", os.path.join(tmp, "form-store"))
    text += "\n[admin]\nlisten = 127.0.0.1:%d\n" % botapi_emu.free_port()
    conf = os.path.join(tmp, "form.conf")
    with open(conf, "w") as f:
        f.write(text)
    print("\n[form]    %s: a name, an age and a yes or no, in "
          "configuration alone;\n          each reply that changes the "
          "conversation's state is a follow-up,\n          committed "
          "with the state in one transaction" % os.path.relpath(
              args.form, ROOT))
    seen = len(emu.calls_of("getWebhookInfo"))
    proc = subprocess.Popen([args.daemon, "-c", conf], stdout=log,
                            stderr=log, env=env)
    try:
        # registered once the daemon reads its webhook back
        emu.wait_calls("getWebhookInfo", seen + 1, timeout=20)
        for i, said in enumerate(["/form", "Ann", "old", "41", "no", "Ann",
                                  "42", "yes", "hello"]):
            update = {"update_id": 600000 + i, "message": {
                "message_id": 200 + i, "from": ann, "chat": chat,
                "date": int(time.time()), "text": said}}
            if said.startswith("/"):
                update["message"]["entities"] = [
                    {"offset": 0, "length": len(said), "type":
                     "bot_command"}]
            before = len(emu.calls_of("sendMessage"))
            status, _, _, body = emu.deliver(update)
            print("Ann   -> bot  %s" % said)
            if body:
                print("  inline     %s" % describe(json.loads(body)))
            else:
                c = emu.wait_calls("sendMessage", before + 1,
                                   timeout=10)[before]
                print("  follow-up  %s" % describe(dict(
                    c.params, method=c.method)))
            settle(os.path.join(tmp, "form-store"))
            if said == "42":
                out = subprocess.run(
                    [args.daemon, "-c", conf, "--state", str(chat["id"]),
                     str(ann["id"])], capture_output=True, text=True,
                    env=env, timeout=20)
                print("[operator] tgwebhookd --state %d %d, while it runs:"
                      % (chat["id"], ann["id"]))
                for line in out.stdout.splitlines():
                    print("           " + line)
        print()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
        print("[stop]    SIGTERM: tgwebhookd exited %d" % rc)
        return rc
    except Exception:
        proc.kill()
        proc.wait()
        raise


def settle(store, timeout=10.0):
    """Waits until the bot's follow-ups are all delivered, as a user reads
    the answers before typing on: a chat's next answer goes inline only
    when nothing of that chat is still unsent (README, "One chat's
    updates in order")."""
    import sqlite3
    deadline = time.time() + timeout
    while time.time() < deadline:
        db = sqlite3.connect(os.path.join(store, "tgwebhookd.db"))
        try:
            left = db.execute("SELECT count(*) FROM calls WHERE "
                              "state = 0").fetchone()[0]
        finally:
            db.close()
        if left == 0:
            return
        time.sleep(0.02)
    raise AssertionError("follow-ups still unsent after %ss" % timeout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", default=os.path.join(ROOT, "build",
                                                     "tgwebhookd"))
    ap.add_argument("--config", default=os.path.join(ROOT, "conf",
                                                     "hello.conf"))
    ap.add_argument("--form", default=os.path.join(ROOT, "conf",
                                                   "form.conf"))
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="tgw-demo-")
    port = botapi_emu.free_port()
    emu = botapi_emu.Emulator(TOKEN, username="HelloDemoBot",
                              forward=("127.0.0.1", port)).start()
    with open(args.config) as f:
        text = f.read()
    text = set_key(text, "api_url", emu.url)
    text = set_key(text, "listen", "127.0.0.1:%d" % port)
    text = set_key(text, "dir", os.path.join(tmp.name, "store"))
    # Handlers match in file order: the demo's go first.
    plugins = os.path.join(os.path.dirname(os.path.abspath(args.daemon)),
                           "plugins")
    added = ("; added by the demo: a script whose second call is a "
             "follow-up\n[handler.about]\ncommands = /about\nexec = %s\n\n"
             "; a C plugin: dice on inline buttons\n[handler.roll]\n"
             "plugin = %s\ncommands = /roll\n\n[handler.roll-buttons]\n"
             "plugin = %s\nupdates = callback_query\ntext = ^dice:\n\n"
             "; a Python worker: Telegram's Simple Poll bot\n"
             "[handler.poll]\nworker = %s\n"
             "updates = message callback_query\ntext = ^(/poll|/results|"
             "poll:)\n\n" % (
                 os.path.join(ROOT, "examples", "about-bot"),
                 os.path.join(plugins, "dice.so"),
                 os.path.join(plugins, "dice.so"),
                 os.path.join(ROOT, "examples", "poll-worker")))
    first = text.index("[handler.")
    text = text[:first] + added + text[first:]
    # and its health and metrics on a free port, not the default one
    text += "\n[admin]\nlisten = 127.0.0.1:%d\n" % botapi_emu.free_port()
    conf = os.path.join(tmp.name, "hello.conf")
    with open(conf, "w") as f:
        f.write(text)
    logpath = os.path.join(tmp.name, "tgwebhookd.log")
    log = open(logpath, "wb")
    env = dict(os.environ, TGWEBHOOKD_TOKEN=TOKEN)
    env.pop("JOURNAL_STREAM", None)

    print("tgwebhookd demo: Telegram's Hello Bot as configuration (%s),\n"
          "with an exec script, the dice C plugin and the Simple Poll bot "
          "as a Python worker\n" % os.path.relpath(args.config, ROOT))
    proc = subprocess.Popen([args.daemon, "-c", conf], stdout=log,
                            stderr=log, env=env)
    rc = 1
    try:
        calls = emu.wait_calls("setWebhook", 1, timeout=20)
        sw = calls[0]
        url = sw.params["url"]
        pem = sw.files.get("certificate", (None, b""))[1]
        print("[start]   tgwebhookd serves HTTPS on 127.0.0.1:%d; the Bot "
              "API emulator plays Telegram on %s" % (port, emu.url))
        print("[register] setWebhook url=%s/<secret path, %d chars>" % (
            url.rsplit("/", 1)[0], len(url.rsplit("/", 1)[1])))
        print("           secret_token=<%d chars>, max_connections=%s, "
              "certificate uploaded: %d bytes of PEM" % (
                  len(sw.params.get("secret_token", "")),
                  sw.params.get("max_connections"), len(pem)))
        emu.wait_calls("getWebhookInfo", 1, timeout=10)
        print("[register] getWebhookInfo read back; deliveries now go over "
              "TLS that trusts only that certificate, host name checked\n")

        ann = {"id": 31337, "is_bot": False, "first_name": "Ann",
               "language_code": "en"}
        chat = {"id": 31337, "first_name": "Ann", "type": "private"}
        last_bot_message = [0]

        def press(data):
            """Ann presses the button carrying data under the bot's last
            message."""
            return {"callback_query": {
                "id": "cq%d" % time.time_ns(), "from": ann,
                "chat_instance": "1", "data": data,
                "message": {"message_id": last_bot_message[0],
                            "date": int(time.time()), "chat": chat,
                            "text": "(the bot's message)"}}}

        # (what Ann says or presses, the follow-up to wait for)
        conversation = [
            ("/start", None), ("Hello", None), ("Hi", None),
            ("What's up?", None), ("/about", "sendMessage"),
            ("/roll", None), (("d20", "dice:20"), "editMessageText"),
            ("/poll Lunch? | Pizza | Sushi", None),
            (("Pizza", "poll:1:0"), "editMessageText"),
            (("Close", "poll:1:close"), "editMessageText"),
            ("/stop", None)]
        for i, (said, follow_up) in enumerate(conversation):
            if isinstance(said, tuple):
                update = press(said[1])
                shown = "[presses %s]" % said[0]
            else:
                update = {"message": {
                    "message_id": 10 + i, "from": ann, "chat": chat,
                    "date": int(time.time()), "text": said}}
                if said.startswith("/"):
                    n = len(said.split(" ")[0])
                    update["message"]["entities"] = [
                        {"offset": 0, "length": n, "type": "bot_command"}]
                shown = said
            update = dict(update_id=500000 + i, **update)
            before = len(emu.calls)
            status, _, _, body = emu.deliver(update)
            print("Ann   -> bot  %s" % shown)
            if body:
                call = json.loads(body)
                print("  inline     %s" % describe(call))
                if call.get("method") == "sendMessage":
                    # the number Telegram would give the message it sends
                    last_bot_message[0] = 9000 + i
            else:
                print("  (answered %d with an empty body)" % status)
            if follow_up is not None:
                seen = len([c for c in emu.calls[:before]
                            if c.method == follow_up])
                emu.wait_calls(follow_up, seen + 1, timeout=10)
            settle(os.path.join(tmp.name, "store"))
            for c in emu.calls[before:]:
                print("  follow-up  %s" % describe(dict(c.params,
                                                        method=c.method)))
        print()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
        print("[stop]    SIGTERM: tgwebhookd finished and exited %d" % rc)
        if rc == 0:
            rc = polling_phase(args, conf, text, emu, env, log, ann, chat)
        if rc == 0:
            rc = form_phase(args, emu, tmp.name, env, log, ann, chat)
    except Exception as e:
        print("demo failed: %s" % e, file=sys.stderr)
        proc.kill()
        proc.wait()
        rc = 1
    finally:
        emu.stop()
        log.close()
        print("\nThe daemon's log:")
        with open(logpath) as f:
            for line in f:
                print("  " + line.rstrip())
        tmp.cleanup()
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
