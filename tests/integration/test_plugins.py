"""C plugins: the example plugins end to end, the ABI check, options and
their errors, failures as dead letters, and loading at reload."""

import json
import os
import shutil
import signal
import subprocess

from harness import (ROOT, Daemon, binary, callback, compile_plugin,
                     dead_letters, message, plugin_path, skip)


def check(d):
    """tgwebhookd -t on d's config: (exit code, stderr).  As root, -t loads
    plugins only as [server] user (in a child), so the check names one
    that can read d's files, and the plugins the build made are copied
    there (the checkout may be in a directory only root can enter)."""
    if os.geteuid() == 0:
        text = open(d.conf).read()
        lines = text.split("\n")
        for i, line in enumerate(lines):
            path = line[len("plugin = "):]
            if line.startswith("plugin = /") and os.path.isfile(path) and \
                    not path.startswith(d.dir + "/"):
                lines[i] = "plugin = " + shutil.copy(path, d.dir)
        text = "\n".join(lines)
        if "\nuser = nobody\n" not in text:
            text += "[server]\nuser = nobody\n"
        open(d.conf, "w").write(text)
        os.chmod(d.dir, 0o755)
    out = subprocess.run([binary(), "-c", d.conf, "-t"], capture_output=True,
                         env=d.env, timeout=20)
    return out.returncode, out.stderr.decode()


def line_of(d, text):
    with open(d.conf) as f:
        return 1 + f.read().split(text)[0].count("\n")


def plugin_daemon(name, source, webhook=""):
    """A daemon (not started) whose one handler is source, compiled."""
    d = Daemon("", webhook=webhook, start=False)
    so = compile_plugin(d, name, source)
    with open(d.conf, "a") as f:
        f.write("[handler.%s]\nplugin = %s\n" % (name, so))
    return d


def test_echo_plugin_inline_answers():
    h = ("[handler.echo]\nplugin = %s\nupdates = message\nprefix = You said:\n"
         % plugin_path("echo"))
    with Daemon(h) as d:
        status, _, _, body = d.deliver(message("hello there", 1))
        assert status == 200
        assert json.loads(body) == {"method": "sendMessage", "chat_id": 42,
                                    "text": "You said: hello there"}
        # a command: what follows it
        _, _, _, body = d.deliver(message("/echo  round trip", 2))
        assert json.loads(body)["text"] == "You said: round trip"
        # no text (a sticker): copied back
        sticker = message("x", 3)
        del sticker["message"]["text"]
        sticker["message"]["sticker"] = {"file_id": "F", "width": 1,
                                         "height": 1}
        _, _, _, body = d.deliver(sticker)
        assert json.loads(body) == {"method": "copyMessage", "chat_id": 42,
                                    "from_chat_id": 42, "message_id": 3}
        d.wait_log("update 1: message: handler echo: inline sendMessage")


def test_dice_plugin_keyboard_then_callback():
    h = ("[handler.roll]\nplugin = %s\ncommands = roll\ndice = 6 20\n"
         "[handler.roll-buttons]\nplugin = %s\nupdates = callback_query\n"
         "text = ^dice:\n" % (plugin_path("dice"), plugin_path("dice")))
    with Daemon(h) as d:
        _, _, _, body = d.deliver(message("/roll", 1))
        call = json.loads(body)
        assert call["method"] == "sendMessage" and call["chat_id"] == 42
        buttons = call["reply_markup"]["inline_keyboard"][0]
        assert [b["callback_data"] for b in buttons] == ["dice:6", "dice:20"]
        # pressing d20: the toast inline, the edit as a follow-up
        _, _, _, body = d.deliver(callback("dice:20", 2, message_id=77))
        toast = json.loads(body)
        assert toast["method"] == "answerCallbackQuery"
        assert toast["callback_query_id"] == "cq2"
        rolled = int(toast["text"].split(": ")[1])
        assert 1 <= rolled <= 20
        edit = d.emu.wait_calls("editMessageText", 1)[0].params
        assert edit["chat_id"] == 42 and edit["message_id"] == 77
        assert edit["text"].endswith("d20 rolled %d" % rolled)
        assert "inline_keyboard" in edit["reply_markup"]
        # a die not offered (an old keyboard, or forged data)
        _, _, _, body = d.deliver(callback("dice:7", 3))
        assert "no longer offered" in json.loads(body)["text"]
        # other callback data is not this handler's
        assert d.deliver(callback("other", 4))[3] == b""


FAILING = r'''
#include <tgwebhookd.h>
static int handle(void *s, const struct tgw_update *u, struct tgw_reply *r)
{
	(void)s;
	tgw_reply_text(r, "never sent");
	tgw_log(TGW_LOG_WARN, "about to fail on %lld",
	    (long long)tgw_update_id(u));
	tgw_reply_fail(r, "database unreachable (%s)", tgw_handler_name(u));
	return -1;
}
TGW_PLUGIN(0, 0, handle, 0);
'''


def test_failing_plugin_is_dead_letter_and_sends_nothing():
    with plugin_daemon("f", FAILING) as d:
        d.start()
        status, _, _, body = d.deliver(message("hi", 5))
        assert status == 200 and body == b""
        d.wait_log("handler f: about to fail on 5")
        d.wait_log("handler f failed: database unreachable (f)")
        rows = dead_letters(d)
        assert [(r[0], r[1]) for r in rows] == [(5, "f")]
        assert d.emu.calls_of("sendMessage") == []


NOT_UTF8 = r'''
#include <tgwebhookd.h>
static int handle(void *s, const struct tgw_update *u, struct tgw_reply *r)
{
	(void)s;
	(void)u;
	/* refused, said so, and the plugin goes on */
	if (tgw_reply_text(r, "caf\xe9") != -1)
		return -1;
	return tgw_reply_text(r, "caf\xc3\xa9 \"ok\"\n");
}
TGW_PLUGIN(0, 0, handle, 0);
'''


def test_reply_text_refuses_what_is_not_utf8():
    with plugin_daemon("u", NOT_UTF8) as d:
        d.start()
        status, _, _, body = d.deliver(message("hi", 7))
        answer = json.loads(body)
        assert status == 200, body
        assert answer == {"method": "sendMessage", "chat_id": 42,
                          "text": "caf\u00e9 \"ok\"\n"}, answer
        d.wait_log("update 7: tgw_reply_text: the text is not UTF-8")
        assert d.emu.calls_of("sendMessage") == []


BLOCKING = r'''
#include <unistd.h>
#include <tgwebhookd.h>
static int handle(void *s, const struct tgw_update *u, struct tgw_reply *r)
{
	(void)s;
	usleep(600000);
	return tgw_reply_text(r, tgw_update_text(u, 0));
}
TGW_PLUGIN(TGW_PLUGIN_BLOCKING, 0, handle, 0);
'''


def test_blocking_plugin_runs_on_handler_threads():
    with plugin_daemon("slow", BLOCKING, "reply_deadline = 200ms") as d:
        d.start()
        # answered empty at the deadline; the call follows
        status, _, _, body = d.deliver(message("late hello", 6))
        assert status == 200 and body == b""
        sent = d.emu.wait_calls("sendMessage", 1)
        assert sent[0].params["text"] == "late hello"


CXX_PLUGIN = r'''
#include <string>
#include <tgwebhookd.h>
static int handle(void *, const struct tgw_update *u, struct tgw_reply *r)
{
	std::string t = std::string("C++ heard: ") + tgw_update_text(u, nullptr);
	return tgw_reply_text(r, t.c_str());
}
TGW_PLUGIN(0, nullptr, handle, nullptr);
'''


def test_cxx_plugin():
    if shutil.which("g++") is None:
        skip("g++ is not installed")
    d = Daemon("", start=False)
    src = os.path.join(d.dir, "cxx.cc")
    so = os.path.join(d.dir, "cxx.so")
    with open(src, "w") as f:
        f.write(CXX_PLUGIN)
    jansson = subprocess.run(["pkg-config", "--cflags", "jansson"],
                             capture_output=True, text=True).stdout.split()
    subprocess.run(["g++", "-shared", "-fPIC", "-fvisibility=hidden",
                    "-I" + os.path.join(ROOT, "src")] + jansson +
                   ["-o", so, src], check=True)
    with open(d.conf, "a") as f:
        f.write("[handler.cxx]\nplugin = %s\n" % so)
    with d:
        d.start()
        assert json.loads(d.deliver(message("hi", 1))[3])["text"] == \
            "C++ heard: hi"


def test_abi_mismatch_and_bad_files_refused_with_reasons():
    d = Daemon("", start=False)
    with d:
        old = compile_plugin(d, "old", "#include <tgwebhookd.h>\n"
                             "static int h(void *s, const struct tgw_update "
                             "*u, struct tgw_reply *r) { (void)s; (void)u; "
                             "(void)r; return 0; }\n"
                             "__attribute__((visibility(\"default\"))) "
                             "const struct tgw_plugin tgw_plugin = "
                             "{ 999, 0, 0, h, 0 };\n")
        none = compile_plugin(d, "none", "int not_a_plugin = 1;\n")
        loose = compile_plugin(d, "loose", FAILING)
        os.chmod(loose, 0o777)
        base = open(d.conf).read()
        for so, want in ((old, "built for plugin ABI 999, this tgwebhookd "
                          "speaks ABI 1: rebuild it"),
                         (none, "defines no `tgw_plugin`"),
                         (loose, "writable by group or others (mode 0777)"),
                         ("/nonexistent/x.so", "No such file"),
                         ("relative.so", "absolute path")):
            open(d.conf, "w").write(base + "[handler.p]\nplugin = %s\n" % so)
            rc, err = check(d)
            assert rc == 1, err
            assert (":%d: plugin: " % line_of(d, "plugin =")) in err, err
            assert want in err, err


def test_options_reach_init_and_errors_name_the_line():
    h = ("[handler.echo]\nplugin = %s\nupdates = message\nprefix = >\n"
         "colour = blue\n" % plugin_path("echo"))
    with Daemon(h, start=False) as d:
        rc, err = check(d)
        assert rc == 1
        assert ":%d: colour: unknown option (echo takes prefix)" % (
            line_of(d, "colour")) in err, err
        # the daemon refuses to start with the same message
        out = subprocess.run([binary(), "-c", d.conf], capture_output=True,
                             env=d.env, timeout=20)
        assert out.returncode == 1 and b"colour: unknown option" in out.stderr
        h2 = ("[handler.dice]\nplugin = %s\ndice = 1 6\n"
              % plugin_path("dice"))
        open(d.conf, "w").write(open(d.conf).read().split("[handler.echo]")[0]
                                + h2)
        rc, err = check(d)
        assert ":%d: dice: '1 6': want numbers of sides" % (
            line_of(d, "dice =")) in err, err


def test_reload_loads_new_plugin_and_refuses_bad_one():
    h = "[handler.hi]\nreply = hi\ncommands = hi\n"
    with Daemon(h) as d:
        assert d.deliver(message("hello", 1))[3] == b""   # no handler
        with open(d.conf, "a") as f:
            f.write("[handler.echo]\nplugin = %s\nupdates = message\n"
                    % plugin_path("echo"))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload done")
        assert json.loads(d.deliver(message("hello", 2))[3])["text"] == \
            "hello"
        with open(d.conf, "a") as f:
            f.write("[handler.bad]\nplugin = /nonexistent.so\n")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload refused: the running configuration stays")
        assert "plugin: /nonexistent.so: No such file" in d.log()
        assert json.loads(d.deliver(message("again", 3))[3])["text"] == \
            "again"


VERSIONED = r'''
#include <tgwebhookd.h>
static int handle(void *s, const struct tgw_update *u, struct tgw_reply *r)
{
	(void)s;
	(void)u;
	return tgw_reply_text(r, "version %s");
}
TGW_PLUGIN(0, 0, handle, 0);
'''


def test_reload_loads_a_plugin_rebuilt_at_the_same_path():
    with plugin_daemon("v", VERSIONED % "1") as d:
        d.start()

        def answer(uid):
            return json.loads(d.deliver(message("hi", uid))[3])["text"]

        def reload():
            since = len(d.log())
            d.proc.send_signal(signal.SIGHUP)
            d.wait_log("reload done", since=since)
            return d.log()[since:]
        assert answer(1) == "version 1"
        # unchanged: the library already mapped serves the new table
        assert "changed since it was loaded" not in reload()
        assert answer(2) == "version 1"
        # rebuilt (as make does: a new file at the same path)
        for version, uid in (("2", 3), ("3", 4)):
            so = compile_plugin(d, "v", VERSIONED % version)
            assert "plugin %s changed since it was loaded: loading the " \
                "new file" % so in reload()
            assert answer(uid) == "version " + version
        assert "changed since it was loaded" not in reload()
        assert answer(5) == "version 3"
