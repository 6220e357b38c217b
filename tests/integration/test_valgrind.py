"""The daemon under valgrind (memcheck) through a whole life: start and
registration, updates through every handler kind (reply, exec, plugin,
worker) with inline answers and follow-ups, a reload that changes a
worker, SIGTERM.  No memory error, nothing definitely or indirectly lost.
Skipped in the sanitizer build (ASan and valgrind do not mix)."""

import json
import os
import shutil
import signal

from harness import ROOT, Daemon, callback, message, plugin_path, settle, skip

VALGRIND = ["valgrind", "--quiet", "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--error-exitcode=99", "--track-fds=no"]


def test_whole_life_under_valgrind():
    if os.environ.get("TGW_SANITIZE"):
        skip("sanitizer build: ASan and valgrind do not mix")
    if shutil.which("valgrind") is None:
        skip("valgrind is not installed")
    poll = os.path.join(ROOT, "examples", "poll-worker")
    about = os.path.join(ROOT, "examples", "about-bot")
    h = ("[handler.start]\ncommands = /start\nreply = hi {from.first_name}\n"
         "[handler.about]\ncommands = /about\nexec = %s\n"
         "[handler.roll]\nplugin = %s\ncommands = /roll\n"
         "[handler.buttons]\nplugin = %s\nupdates = callback_query\n"
         "text = ^dice:\n"
         "[handler.echo]\nplugin = %s\ncommands = /echo\n"
         "[handler.poll]\nworker = %s\nupdates = message callback_query\n"
         % (about, plugin_path("dice"), plugin_path("dice"),
            plugin_path("echo"), poll))
    d = Daemon(h, webhook="reply_deadline = 20s", wrap=VALGRIND, start=False)
    with d:
        d.start()
        d.wait_log("handler poll: worker 0 started", 60)
        assert json.loads(d.deliver(message("/start", 1))[3])["text"] == \
            "hi Ann"
        assert d.deliver(message("/about", 2))[0] == 200
        # the next answers go inline once earlier follow-ups are out
        settle(d, 30)
        keyboard = json.loads(d.deliver(message("/roll", 3))[3])
        assert keyboard["method"] == "sendMessage"
        toast = json.loads(d.deliver(callback("dice:6", 4))[3])
        assert toast["method"] == "answerCallbackQuery"
        d.emu.wait_calls("editMessageText", 1, timeout=30)
        settle(d, 30)
        poll_msg = json.loads(d.deliver(message("/poll Q | A | B", 5))[3])
        assert poll_msg["text"].startswith("\U0001f4ca Q")
        d.deliver(callback("poll:1:0", 6))
        d.emu.wait_calls("editMessageText", 2, timeout=30)
        # a bad request, then a reload that changes the worker pool
        assert d.deliver(b"{not json")[0] == 400
        text = open(d.conf).read().replace(
            "[handler.poll]\n", "[handler.poll]\nworkers = 2\n")
        open(d.conf, "w").write(text)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload done", 60)
        d.wait_log("handler poll: worker 1 started", 60)
        d.wait_log("handler poll: workers stopped", 60)   # the old pool
        settle(d, 30)
        assert json.loads(d.deliver(message("/echo hello", 7))[3])[
            "text"] == "hello"
        rc = d.stop(timeout=120)
        log = d.log()
        assert "== ERROR SUMMARY" not in log or \
            "ERROR SUMMARY: 0 errors" in log, log[-4000:]
        assert rc == 0, "valgrind exit %s:\n%s" % (rc, log[-4000:])
