"""Exec handlers: the protocol, follow-ups, the deadline, failures kept as
dead letters, timeouts that kill the whole process group."""

import json
import os
import stat
import subprocess
import time

from harness import Daemon, binary, dead_letters, eventually, message


def script(d, name, body):
    path = os.path.join(d.dir, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, stat.S_IRWXU)
    return path


def exec_daemon(body, extra="", deadline="2s", name="h"):
    d = Daemon("", webhook="reply_deadline = %s" % deadline, start=False)
    path = script(d, name, body)
    with open(d.conf, "a") as f:
        f.write("[handler.%s]\nexec = %s\n%s\n" % (name, path, extra))
    d.start()
    return d


PROTOCOL = r'''
cat > "$0.stdin"
env > "$0.env"
printf '{"method":"sendMessage","chat_id":%s,"text":"first %s [%s]"}\n' \
    "$TGW_CHAT_ID" "$TGW_COMMAND" "$TGW_ARGS"
printf '{"method":"sendMessage","chat_id":%s,"text":"second"}' "$TGW_CHAT_ID"
printf '{"method":"getChat","chat_id":1}'
echo "a note from the handler" >&2
'''


def test_protocol_inline_then_followups():
    d = exec_daemon(PROTOCOL)
    with d:
        update = message("/roll 2d6", 31)
        status, _, headers, body = d.deliver(update)
        assert status == 200
        call = json.loads(body)
        assert call == {"method": "sendMessage", "chat_id": 42,
                        "text": "first roll [2d6]"}
        sent = d.emu.wait_calls("sendMessage", 1)
        assert sent[0].params == {"chat_id": 42, "text": "second"}
        d.emu.wait_calls("getChat", 1)  # never inline: a follow-up
        # stdin is the update as received
        stdin = open(os.path.join(d.dir, "h.stdin"), "rb").read()
        assert json.loads(stdin) == update
        env = dict(l.split("=", 1) for l in
                   open(os.path.join(d.dir, "h.env")).read().splitlines()
                   if "=" in l)
        assert env["TGW_UPDATE_TYPE"] == "message"
        assert env["TGW_UPDATE_ID"] == "31"
        assert env["TGW_CHAT_ID"] == "42"
        assert env["TGW_HANDLER"] == "h"
        assert "TGWEBHOOKD_TOKEN" not in env   # a small environment
        assert not any(v for k, v in env.items() if "AAtest" in v)
        d.wait_log("update 31: handler h: stderr: a note from the handler")


def test_inline_only_for_allowed_methods():
    d = exec_daemon("printf '{\"method\":\"getMe\"}{\"method\":"
                    "\"sendMessage\",\"chat_id\":1,\"text\":\"x\"}'\n")
    with d:
        status, _, _, body = d.deliver(message("hi", 1))
        assert status == 200 and body == b""
        d.emu.wait_calls("getMe", 1)   # a follow-up, never inline
        d.emu.wait_calls("sendMessage", 1)


def test_late_handler_answered_at_deadline_calls_follow_up():
    d = exec_daemon("sleep 1.5\nprintf '{\"method\":\"sendMessage\","
                    "\"chat_id\":%s,\"text\":\"late\"}' \"$TGW_CHAT_ID\"\n",
                    deadline="300ms")
    with d:
        t0 = time.time()
        status, _, _, body = d.deliver(message("hi", 5))
        took = time.time() - t0
        assert status == 200 and body == b""
        assert took < 1.2, took
        sent = d.emu.wait_calls("sendMessage", 1, timeout=10)
        assert sent[0].params["text"] == "late"
        d.wait_log("still running at reply_deadline")


def test_failure_is_dead_letter_and_200():
    d = exec_daemon("echo 'something broke' >&2\nexit 3\n")
    with d:
        update = message("hi", 66)
        status, _, _, body = d.deliver(update)
        assert status == 200 and body == b""
        d.wait_log("handler h failed: exited with status 3")
        d.wait_log("stderr: something broke")
        rows = dead_letters(d)
        assert len(rows) == 1
        assert rows[0][0] == 66 and rows[0][1] == "h"
        assert "status 3" in rows[0][2]
        assert json.loads(rows[0][3]) == update
        # the operator sees it
        out = subprocess.run([binary(), "-c", d.conf, "--outbox"],
                             capture_output=True, text=True, env=d.env,
                             timeout=20)
        assert out.returncode == 0, out
        assert "failed updates (handler failed; the update is kept in the " \
            "store's dead_updates): 1" in out.stdout, out.stdout
        line = [l for l in out.stdout.splitlines() if " 66 " in l][0]
        assert line.split()[2] == "h" and "exited with status 3" in line
        # purged once older than 0 s, on the store's clock (whole
        # seconds): asked until the clock has moved on

        def purge():
            out = subprocess.run([binary(), "-c", d.conf, "--purge-dead",
                                  "0s"], capture_output=True, text=True,
                                 env=d.env, timeout=20)
            return out if out.stdout != "0 dead letter(s) and 0 failed " \
                "update(s) deleted\n" else None
        out = eventually(purge, timeout=5)
        assert out and out.stdout == "0 dead letter(s) and 1 failed " \
            "update(s) deleted\n", out
        assert dead_letters(d) == []


def test_bad_output_is_dead_letter():
    d = exec_daemon("echo '{\"method\": \"sendMessage\"} not json'\n")
    with d:
        assert d.deliver(message("hi", 8))[0] == 200
        d.wait_log("bad output on stdout: call 2: not JSON")
        assert len(dead_letters(d)) == 1


def test_timeout_kills_process_group():
    d = exec_daemon("sleep 30 &\necho $! > \"$0.child\"\nsleep 30\n",
                    extra="timeout = 500ms", deadline="2s")
    with d:
        t0 = time.time()
        status, _, _, body = d.deliver(message("hi", 9))
        assert status == 200 and body == b""
        assert time.time() - t0 < 1.8
        d.wait_log("timed out after 500ms")
        child = int(open(os.path.join(d.dir, "h.child")).read())
        deadline = time.time() + 3
        while time.time() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            # a zombie of init is gone from our point of view too
            try:
                st = open("/proc/%d/stat" % child).read().split()[2]
                if st == "Z":
                    break
            except FileNotFoundError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the handler's child %d survived" % child)
        assert len(dead_letters(d)) == 1


def peak_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])


def test_100_mb_on_stdout_or_stderr_is_bounded():
    # 100 MB on stdout: cut off at 1 MiB, the handler killed, a dead letter
    d = exec_daemon("if [ $TGW_UPDATE_ID = 11 ]; then out=2; else out=1; fi\n"
                    "head -c 100000000 /dev/zero | tr '\\0' 'a' >&$out\n",
                    deadline="10s")
    with d:
        assert d.deliver(message("out", 10))[0] == 200
        d.wait_log("printed more than 1048576 bytes on stdout")
        assert [r[0] for r in dead_letters(d)] == [10]
        # 100 MB on stderr: logged up to its cap, the rest drained and
        # counted, and the update handled (no calls)
        assert d.deliver(message("err", 11), timeout=30)[0] == 200
        d.wait_log("update 11: message: handler h: 0 follow-ups", 30)
        assert [r[0] for r in dead_letters(d)] == [10]
        # neither was held in memory
        assert peak_rss_kib(d.proc.pid) < 64 << 10, peak_rss_kib(d.proc.pid)


def test_stdout_closed_early_and_death_by_signal():
    # stdout closed at once, then a call-less, successful exit: no calls
    d = exec_daemon("exec 1>&-\nsleep 0.2\nexit 0\n")
    with d:
        status, _, _, body = d.deliver(message("hi", 11))
        assert status == 200 and body == b""
        assert dead_letters(d) == []
        d.wait_log("update 11: message: handler h: 0 follow-ups")
    # killed by a signal: a dead letter naming it
    d = exec_daemon("printf '{\"method\":\"sendMessage\",\"chat_id\":1,"
                    "\"text\":\"x\"}'\nkill -SEGV $$\n")
    with d:
        status, _, _, body = d.deliver(message("hi", 12))
        assert status == 200 and body == b""     # its output is not used
        d.wait_log("handler h failed: killed by signal 11 (Segmentation "
                   "fault)")
        assert [r[0] for r in dead_letters(d)] == [12]


def test_slow_handler_does_not_stall_others():
    d = Daemon("", webhook="reply_deadline = 10s", start=False)
    slow = script(d, "slow", "touch \"$0.started\"\nsleep 3\n")
    with open(d.conf, "a") as f:
        f.write("[handler.slow]\ncommands = /slow\nexec = %s\ntimeout = 5s\n"
                "[handler.fast]\nreply = fast\n" % slow)
    d.start()
    with d:
        import threading
        results = []
        t = threading.Thread(target=lambda: results.append(
            d.deliver(message("/slow", 1))))
        t.start()
        assert eventually(lambda: os.path.exists(slow + ".started"))
        # another connection, as Telegram opens one per chat queue
        other = d.emu._connect()
        other.request("POST", "/" + d.emu.webhook["url"].split("/", 3)[3],
                      body=json.dumps(message("hello", 2, chat_id=9)),
                      headers={"X-Telegram-Bot-Api-Secret-Token":
                               d.emu.webhook["secret"],
                               "Content-Type": "application/json"})
        t0 = time.time()
        resp = other.getresponse()
        body = resp.read()
        assert time.time() - t0 < 1.0
        assert json.loads(body)["text"] == "fast"
        other.close()
        t.join()
        assert results[0][0] == 200


def test_readme_example_handler():
    """The README's Python handler, as shipped in examples/echo-bot."""
    from harness import ROOT
    d = Daemon("[handler.echo]\nupdates = message\nexec = %s\n" %
               os.path.join(ROOT, "examples", "echo-bot"))
    with d:
        status, _, _, body = d.deliver(message("one two three", 12))
        assert json.loads(body) == {"method": "sendMessage", "chat_id": 42,
                                    "text": "one two three",
                                    "reply_to_message_id": 12}
        sent = d.emu.wait_calls("sendMessage", 1)
        assert sent[0].params["text"] == "3 word(s)"
        d.wait_log("update 12: handler echo: stderr: echoed update 12")
