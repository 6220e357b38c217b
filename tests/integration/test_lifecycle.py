"""Registration, secrets kept across restarts, the command line, the
token never shown, signals."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

from harness import Daemon, TOKEN, binary, eventually, message

HANDLERS = "[handler.start]\ncommands = /start\nreply = hi\n"


def test_registration_parameters():
    webhook = ("max_connections = 12\nallowed_updates = message, "
               "callback_query\ndrop_pending_updates = on\n"
               "ip_address = 203.0.113.7\n")
    with Daemon(HANDLERS, webhook=webhook) as d:
        call = d.emu.wait_calls("setWebhook")[0]
        p = call.params
        assert call.content_type.startswith("multipart/form-data")
        assert p["url"].startswith("https://localhost:8443/")
        assert len(p["url"].rsplit("/", 1)[1]) >= 32   # generated path
        assert len(p["secret_token"]) >= 40
        assert set(p["secret_token"]) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
        assert p["max_connections"] == "12"
        assert json.loads(p["allowed_updates"]) == ["message",
                                                    "callback_query"]
        assert p["drop_pending_updates"] == "true"
        assert p["ip_address"] == "203.0.113.7"
        name, pem = call.files["certificate"]
        with open(os.path.join(d.store, "webhook.pem"), "rb") as f:
            assert f.read() == pem
        assert pem.count(b"BEGIN CERTIFICATE") == 1
        assert b"PRIVATE" not in pem
        d.emu.wait_calls("getWebhookInfo")
        d.wait_log("Telegram reports: url https://localhost:8443/[redacted]")
        key = os.stat(os.path.join(d.store, "webhook.key"))
        assert key.st_mode & 0o777 == 0o600
        db = os.stat(os.path.join(d.store, "tgwebhookd.db"))
        assert db.st_mode & 0o077 == 0


def test_secrets_and_certificate_kept_across_restart():
    with Daemon(HANDLERS) as d:
        first = d.emu.wait_calls("setWebhook")[0]
        d.stop()
        d.emu.calls.clear()
        d.start()
        second = d.emu.wait_calls("setWebhook")[0]
        assert first.params["url"] == second.params["url"]
        assert first.params["secret_token"] == second.params["secret_token"]
        assert first.files["certificate"] == second.files["certificate"]
        assert d.deliver(message("/start", 1))[0] == 200


def test_configured_secrets_used_and_ca_cert_not_uploaded():
    d = Daemon(HANDLERS, webhook="path = /my/hook\nsecret_token = abc_DEF-123"
               "\nself_signed = off\ncertificate = CERT\nprivate_key = KEY\n",
               start=False)
    with d:
        # a certificate that is not self-signed: a tiny CA signs it
        sh = lambda *a: subprocess.run(a, check=True, capture_output=True,
                                       cwd=d.dir)
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
           "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj",
           "/CN=Test CA")
        sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout",
           "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost")
        with open(os.path.join(d.dir, "ext"), "w") as f:
            f.write("subjectAltName=DNS:localhost\n")
        sh("openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem",
           "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.pem",
           "-days", "30", "-extfile", "ext")
        text = open(d.conf).read().replace(
            "CERT", os.path.join(d.dir, "leaf.pem")).replace(
            "KEY", os.path.join(d.dir, "leaf.key"))
        open(d.conf, "w").write(text)
        d.start()
        call = d.emu.wait_calls("setWebhook")[0]
        assert call.params["url"] == "https://localhost:8443/my/hook"
        assert call.params["secret_token"] == "abc_DEF-123"
        assert "certificate" not in call.files
        d.wait_log("CA-issued (not uploaded)")
        # Telegram would trust the CA from the system store; emulate it
        d.emu.webhook["cert"] = os.path.join(d.dir, "ca.pem")
        assert d.deliver(message("/start", 1))[0] == 200


def test_username_from_getme():
    with Daemon("[handler.s]\ncommands = /start\nreply = yes\n",
                username=None) as d:
        d.emu.wait_calls("getMe")
        d.wait_log("bot username @TestBot (from getMe)")
        u = message("/start@TestBot", 1)
        assert json.loads(d.deliver(u)[3])["text"] == "yes"
        u = message("/start@OtherBot", 2)
        assert d.deliver(u)[3] == b""


def test_api_429_and_502_retried_while_serving():
    import botapi_emu
    emu = botapi_emu.Emulator(TOKEN).start()
    emu.script("setWebhook",
               (429, {"ok": False, "error_code": 429, "description":
                      "Too Many Requests: retry after 1",
                      "parameters": {"retry_after": 1}},
                {"Retry-After": "1"}),
               (502, {"ok": False, "error_code": 502,
                      "description": "Bad Gateway"}))
    with Daemon(HANDLERS, emu=emu, start=False) as d:
        t0 = time.time()
        d.start(wait_register=False)
        d.wait_log("setWebhook failed (retry-after): Too Many Requests")
        d.wait_log("setWebhook failed (transient): Bad Gateway")
        d.wait_log("webhook registered", 15)
        calls = emu.calls_of("setWebhook")
        assert len(calls) == 3
        assert calls[1].time - calls[0].time >= 0.95   # honoured
        assert time.time() - t0 < 10


def test_api_unreachable_still_serves():
    with Daemon(HANDLERS, start=False, register=True) as d:
        text = open(d.conf).read().replace(d.emu.url,
                                           "http://127.0.0.1:9")
        open(d.conf, "w").write(text)
        d.start(wait_register=False)
        d.wait_log("setWebhook failed (transient)")
        # the daemon serves: an update on the right path gets its answer
        from harness import post_update, stored_secrets
        path, secret = stored_secrets(d.store)
        out = post_update(d.port, message("/start", 1), path, secret)
        assert out.startswith(b"HTTP/1.1 200"), out[:80]
        assert b'"text":"hi"' in out, out
        assert d.proc.poll() is None


def test_token_never_in_output():
    with Daemon(HANDLERS, username=None) as d:
        d.emu.script("sendMessage", (403, {
            "ok": False, "error_code": 403,
            "description": "Forbidden: bot was blocked by the user"}))
        d.deliver(message("/start", 1))
        d.stop()
        log = d.log()
        assert TOKEN not in log
        assert TOKEN.split(":")[1] not in log
        out = subprocess.run([binary(), "-c", d.conf, "--webhook-info"],
                             capture_output=True, env=d.env, timeout=20)
        assert out.returncode == 0, out
        assert TOKEN.split(":")[1].encode() not in out.stdout + out.stderr
        info = json.loads(out.stdout)
        assert info["url"].startswith("https://localhost:8443/")
        assert info["has_custom_certificate"] is True


def test_delete_webhook_command():
    with Daemon(HANDLERS) as d:
        d.stop()
        out = subprocess.run([binary(), "-c", d.conf, "--delete-webhook"],
                             capture_output=True, env=d.env, timeout=20)
        assert out.returncode == 0, out
        assert b"Webhook was deleted" in out.stdout
        assert d.emu.webhook is None



def test_operator_commands_escape_what_the_bot_api_says():
    """A Bot API answer (a local server, or whatever api_url names) reaches
    the operator's terminal with its control characters escaped: ESC, BEL,
    DEL, C1, U+2028 and bidi controls (found by an outside review)."""
    nasty = "ok \x1b[2J\x07\x7f\u009b\u2028\u202e end"
    with Daemon(HANDLERS) as d:
        d.stop()
        d.emu.script("getWebhookInfo", (200, {"ok": True, "result": {
            "url": "", "pending_update_count": 0,
            "last_error_message": nasty}}))
        out = subprocess.run([binary(), "-c", d.conf, "--webhook-info"],
                             capture_output=True, env=d.env, timeout=20)
        assert out.returncode == 0, out
        assert json.loads(out.stdout)["last_error_message"] == nasty
        d.emu.script("deleteWebhook", (200, {"ok": True, "result": True,
                                             "description": nasty}))
        out2 = subprocess.run([binary(), "-c", d.conf, "--delete-webhook"],
                              capture_output=True, env=d.env, timeout=20)
        assert out2.returncode == 0, out2
        for o in (out.stdout, out2.stdout):
            for bad in (b"\x1b", b"\x07", b"\x7f", b"\xc2\x9b",
                        "\u2028".encode(), "\u202e".encode()):
                assert bad not in o, (bad, o)
        assert out2.stdout.startswith(b"ok \\x1b[2J"), out2.stdout

def test_bad_token_refused_without_showing_it():
    with Daemon(HANDLERS, start=False) as d:
        env = dict(d.env, TGWEBHOOKD_TOKEN="12345:short")
        out = subprocess.run([binary(), "-c", d.conf], capture_output=True,
                             env=env, timeout=20)
        assert out.returncode == 1
        assert b"does not look like a bot token" in out.stderr
        assert b"short" not in out.stderr


def test_sigterm_finishes_in_flight_then_503_then_exit_0():
    d = Daemon("", webhook="reply_deadline = 5s", start=False)
    path = os.path.join(d.dir, "slow")
    with open(path, "w") as f:
        f.write("#!/bin/sh\ntouch \"$0.started\"\nsleep 1.5\nprintf "
                "'{\"method\":\"sendMessage\",\"chat_id\":1,\"text\":"
                "\"done\"}'\n")
    os.chmod(path, 0o700)
    with open(d.conf, "a") as f:
        f.write("[handler.slow]\nexec = %s\n" % path)
    with d:
        d.start()
        # a second keep-alive connection, open before the signal
        other = d.emu._connect()
        other.connect()
        results = []
        t = threading.Thread(target=lambda: results.append(
            d.deliver(message("x", 1))))
        t.start()
        # the handler runs: the update is in flight
        assert eventually(lambda: os.path.exists(path + ".started"))
        d.proc.send_signal(signal.SIGTERM)
        # stopped taking work: the listening socket is closed

        def refused():
            try:
                socket.create_connection(("127.0.0.1", d.port), 1).close()
            except ConnectionRefusedError:
                return True
            except ConnectionResetError:
                # queued on the listener as it closed: look again
                return False
            return False
        assert eventually(refused)
        other.request("POST", "/" + d.emu.webhook["url"].split("/", 3)[3],
                      body=json.dumps(message("y", 2)),
                      headers={"X-Telegram-Bot-Api-Secret-Token":
                               d.emu.webhook["secret"]})
        resp = other.getresponse()
        resp.read()
        assert resp.status == 503
        assert resp.getheader("Retry-After") == "5"
        t.join()
        assert results[0][0] == 200
        assert json.loads(results[0][3])["text"] == "done"
        assert d.proc.wait(10) == 0
        d.proc = None
        d.logf.close()


def test_check_config_reports_every_problem():
    with Daemon(HANDLERS, start=False) as d:
        out = subprocess.run([binary(), "-c", d.conf, "-t"],
                             capture_output=True, env=d.env, timeout=20)
        assert out.returncode == 0, out
        assert out.stdout == b"configuration OK\n"
        with open(d.conf, "a") as f:
            f.write("[handler.bad]\ncommands = /x\ntext = ([a-z\n"
                    "reply = {unclosed\nmystery = 1\n")
        text = open(d.conf).read().replace("port = 8443", "port = 8080")
        open(d.conf, "w").write(text)
        out = subprocess.run([binary(), "-c", d.conf, "-t"],
                             capture_output=True, env=d.env, timeout=20)
        assert out.returncode == 1
        err = out.stderr.decode()
        lines = err.strip().splitlines()
        assert any(":7: port: 8080 is not one of" in l for l in lines), err
        assert any(": text: bad regular expression" in l for l in lines), err
        assert any(": mystery: unknown key for a reply handler" in l
                   for l in lines), err
        for l in lines:
            assert l.startswith(d.conf + ":"), l


def test_certificate_for_another_name_refused():
    d = Daemon(HANDLERS, start=False)
    with d:
        os.makedirs(d.store, mode=0o700)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048",
                        "-nodes", "-keyout", os.path.join(d.store,
                                                          "webhook.key"),
                        "-out", os.path.join(d.store, "webhook.pem"),
                        "-days", "30", "-subj", "/CN=other.example"],
                       check=True, capture_output=True)
        out = subprocess.run([binary(), "-c", d.conf], capture_output=True,
                             env=d.env, timeout=20)
        assert out.returncode == 1
        assert b"does not name localhost" in out.stderr, out.stderr
        out = subprocess.run([binary(), "-c", d.conf, "-t"],
                             capture_output=True, env=d.env, timeout=20)
        assert out.returncode == 1
        assert b"certificate: " in out.stderr


def test_version_and_help():
    out = subprocess.run([binary(), "--version"], capture_output=True)
    assert out.returncode == 0 and out.stdout.startswith(b"tgwebhookd ")
    out = subprocess.run([binary(), "--help"], capture_output=True)
    assert out.returncode == 0 and b"--webhook-info" in out.stdout
    out = subprocess.run([binary(), "--bogus"], capture_output=True)
    assert out.returncode == 2
