"""Running as a service: systemd notifications and watchdog, reload,
health and metrics, journald priorities, privileges, the unit file and
make install."""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

from harness import BUILD, Daemon, ROOT, binary, message, skip

# the build the suite runs on: make install must not rebuild it otherwise
SANITIZE = os.environ.get("TGW_SANITIZE", "")

HANDLERS = "[handler.start]\ncommands = /start\nreply = hi {from.first_name}\n"


class NotifySocket:
    """A $NOTIFY_SOCKET as systemd offers it."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []

    def read(self, until, timeout=10):
        """Collects messages until one contains `until`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                m = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            self.messages.append(m)
            if until in m:
                return m
        raise AssertionError("no %r in %r" % (until, self.messages))


def test_readiness_status_watchdog_reload_stopping():
    d = Daemon(HANDLERS, start=False)
    with d:
        n = NotifySocket(d.dir)
        d.env.update(NOTIFY_SOCKET=n.path, WATCHDOG_USEC="400000")
        d.start()
        n.read("READY=1")
        status = n.read("STATUS=")
        assert "serving 127.0.0.1:%d" % d.port in status, status
        if "webhook registered" not in status:
            n.read("webhook registered")
        t0 = time.time()
        n.read("WATCHDOG=1")
        n.read("WATCHDOG=1")
        assert time.time() - t0 < 2
        d.proc.send_signal(signal.SIGHUP)
        n.read("RELOADING=1")
        n.read("READY=1")
        d.proc.send_signal(signal.SIGTERM)
        n.read("STOPPING=1")
        assert d.proc.wait(10) == 0
        d.proc = None
        d.logf.close()


def peer_cert(port):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            return t.getpeercert(binary_form=True)


def test_reload_swaps_certificate_keeping_open_connections():
    with Daemon(HANDLERS) as d:
        before = peer_cert(d.port)
        # a Telegram connection open across the reload
        old = d.emu._connect()
        old.connect()
        path = "/" + d.emu.webhook["url"].split("/", 3)[3]
        hdrs = {"X-Telegram-Bot-Api-Secret-Token": d.emu.webhook["secret"]}
        old.request("POST", path, body=json.dumps(message("/start", 1)),
                    headers=hdrs)
        assert old.getresponse().read()
        # renewed: a new key and certificate for the same name
        store = d.store
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048",
                        "-nodes", "-keyout", store + "/new.key", "-out",
                        store + "/new.pem", "-days", "90", "-subj",
                        "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost"], check=True,
                       capture_output=True)
        os.rename(store + "/new.key", store + "/webhook.key")
        os.rename(store + "/new.pem", store + "/webhook.pem")
        calls = len(d.emu.calls_of("setWebhook"))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload done")
        after = peer_cert(d.port)
        assert after != before
        # the old connection still works, with the old certificate
        old.request("POST", path, body=json.dumps(message("/start", 2)),
                    headers=hdrs)
        resp = old.getresponse()
        assert resp.status == 200 and b"hi Ann" in resp.read()
        old.close()
        # a new self-signed certificate is uploaded again
        d.emu.wait_calls("setWebhook", calls + 1)
        new_pem = open(store + "/webhook.pem", "rb").read()
        assert d.emu.calls_of("setWebhook")[-1].files["certificate"][1] == \
            new_pem
        deadline = time.time() + 5      # the emulator has taken it
        while open(d.emu.webhook["cert"], "rb").read() != new_pem:
            assert time.time() < deadline
            time.sleep(0.05)
        status, _, _, body = d.deliver(message("/start", 3))
        assert status == 200 and b"hi Ann" in body


def test_bad_reload_keeps_running_config():
    with Daemon(HANDLERS) as d:
        good = open(d.conf).read()
        with open(d.conf, "a") as f:
            f.write("[handler.broken]\ntext = ([\nreply = x\n")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload refused: the running configuration stays")
        assert "text: bad regular expression" in d.log()
        status, _, _, body = d.deliver(message("/start", 1))
        assert json.loads(body)["text"] == "hi Ann"
        # a good change is taken
        with open(d.conf, "w") as f:
            f.write(good.replace("reply = hi {from.first_name}",
                                 "reply = hello again"))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload done")
        status, _, _, body = d.deliver(message("/start", 2))
        assert json.loads(body)["text"] == "hello again"


def metrics(d):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" %
                                d.admin_port, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values


def test_metrics_and_health():
    with Daemon(HANDLERS) as d:
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" %
                                    d.admin_port, timeout=5) as r:
            health = json.loads(r.read())
        assert r.status == 200 and health["status"] == "ok"
        assert health["registered"] is True
        d.deliver(message("/start", 1))
        d.deliver(message("/start", 1))          # a duplicate
        d.deliver(message("no handler", 2))
        d.deliver({"update_id": 3, "newer_type": {}})
        from test_edges import request
        request(d, path="/nope")
        request(d, secret=False)
        m = metrics(d)
        assert m['tgwebhookd_updates_total{type="message",result="inline"}'] \
            == 1
        assert m['tgwebhookd_updates_total{type="message",'
                 'result="duplicate"}'] == 1
        assert m['tgwebhookd_updates_total{type="message",'
                 'result="unhandled"}'] == 1
        assert m['tgwebhookd_updates_total{type="unknown",'
                 'result="unhandled"}'] == 1
        assert m['tgwebhookd_rejected_requests_total{reason="path"}'] == 1
        assert m['tgwebhookd_rejected_requests_total{reason="secret"}'] == 1
        assert m["tgwebhookd_handler_duration_seconds_count"] == 1
        assert m['tgwebhookd_handler_duration_seconds_bucket{le="+Inf"}'] == 1
        assert m['tgwebhookd_botapi_calls_total{method="setWebhook",'
                 'result="ok"}'] == 1
        assert m["tgwebhookd_webhook_registered"] == 1
        assert m["tgwebhookd_outbox_pending"] == 0
        assert m["tgwebhookd_certificate_expiry_timestamp_seconds"] > \
            time.time() + 300 * 86400
        assert m["tgwebhookd_telegram_pending_updates"] == 0
        try:
            urllib.request.urlopen("http://127.0.0.1:%d/other" %
                                   d.admin_port, timeout=5)
            raise AssertionError("/other answered")
        except urllib.error.HTTPError as e:
            assert e.code == 404
    # not registered (the Bot API refuses): 503
    import botapi_emu
    from harness import TOKEN
    emu = botapi_emu.Emulator(TOKEN).start()
    emu.script("setWebhook", *[(401, {"ok": False, "error_code": 401,
                                      "description": "Unauthorized"})] * 5)
    with Daemon(HANDLERS, emu=emu, start=False) as d:
        d.start(wait_register=False)
        d.wait_log("setWebhook failed")
        try:
            urllib.request.urlopen("http://127.0.0.1:%d/healthz" %
                                   d.admin_port, timeout=5)
            raise AssertionError("healthz said ok while not registered")
        except urllib.error.HTTPError as e:
            assert e.code == 503
            assert json.loads(e.read())["registered"] is False


def test_webhook_not_ours_is_reported_in_healthz():
    # Something else re-pointed the webhook (getWebhookInfo shows another
    # URL): a warning, and /healthz 503 saying how it differs.  (The
    # registration again, at the next look, is unit/test_webhook.c's.)
    import botapi_emu
    from harness import TOKEN
    emu = botapi_emu.Emulator(TOKEN).start()
    emu.script("getWebhookInfo", (200, {"ok": True, "result": {
        "url": "https://evil.example/x", "has_custom_certificate": False,
        "pending_update_count": 0, "max_connections": 40}}))
    with Daemon(HANDLERS, emu=emu) as d:
        d.wait_log("Telegram's webhook is not the one configured: its url "
                   "is https://evil.example/x (ours: https://localhost")
        try:
            urllib.request.urlopen("http://127.0.0.1:%d/healthz" %
                                   d.admin_port, timeout=5)
            raise AssertionError("healthz said ok with the webhook not ours")
        except urllib.error.HTTPError as e:
            assert e.code == 503
            health = json.loads(e.read())
        assert health["webhook_mismatch"] == "its url is " \
            "https://evil.example/x", health


def test_journald_priorities():
    d = Daemon(HANDLERS, start=False)
    with d:
        d.env["JOURNAL_STREAM"] = "8:1234"
        d.start()
        from test_edges import request
        request(d, path="/nope")
        d.wait_log("<4>rejected POST from 127.0.0.1: wrong path")
        assert "<5>tgwebhookd" in d.log()
        for line in d.log().splitlines():
            assert line[:1] == "<" and line[2] == ">", line


def test_privileges_dropped_to_user():
    if os.geteuid() != 0:
        skip("needs root to start as root and drop to [server] user")
    d = Daemon(HANDLERS, extra="", start=False)
    with d:
        text = open(d.conf).read().replace("[server]\n",
                                           "[server]\nuser = nobody\n")
        open(d.conf, "w").write(text)
        os.chmod(d.dir, 0o755)
        d.start()
        d.wait_log("running as nobody")
        uid = [l for l in open("/proc/%d/status" % d.proc.pid)
               if l.startswith("Uid:")][0].split()
        assert uid[1:] == [str(65534)] * 4, uid
        assert os.stat(d.store).st_uid == 65534
        assert d.deliver(message("/start", 1))[0] == 200


def test_unit_file_verify_and_security():
    if shutil.which("systemd-analyze") is None:
        skip("systemd-analyze is not installed")
    with tempfile.TemporaryDirectory() as t:
        unit = os.path.join(t, "tgwebhookd.service")
        text = open(os.path.join(ROOT, "systemd", "tgwebhookd.service")).read()
        with open(unit, "w") as f:
            f.write(text.replace("/usr/local/sbin/tgwebhookd", binary()))
        for sec, name in (("8", "tgwebhookd.8"), ("5", "tgwebhookd.conf.5")):
            os.makedirs(os.path.join(t, "man", "man" + sec), exist_ok=True)
            shutil.copy(os.path.join(ROOT, "man", name),
                        os.path.join(t, "man", "man" + sec))
        env = dict(os.environ, MANPATH=os.path.join(t, "man") + ":")
        out = subprocess.run(["systemd-analyze", "verify", unit],
                             capture_output=True, text=True, env=env)
        assert out.returncode == 0 and out.stderr.strip() == "", out
        out = subprocess.run(["systemd-analyze", "security",
                              "--offline=true", unit], capture_output=True,
                             text=True)
        line = [l for l in out.stdout.splitlines()
                if "Overall exposure level" in l][0]
        score = float(line.split(":")[1].split()[0])
        assert score <= 2.0, line


def test_make_install_tree():
    with tempfile.TemporaryDirectory() as t:
        out = subprocess.run(["make", "-s", "-C", ROOT, "install",
                              "BUILD=" + BUILD, "SANITIZE=" + SANITIZE,
                              "DESTDIR=" + t],
                             capture_output=True, text=True)
        assert out.returncode == 0, out
        for path in ("usr/local/sbin/tgwebhookd",
                     "etc/tgwebhookd/tgwebhookd.conf",
                     "etc/systemd/system/tgwebhookd.service",
                     "usr/local/share/man/man8/tgwebhookd.8",
                     "usr/local/share/man/man5/tgwebhookd.conf.5",
                     "usr/local/libexec/tgwebhookd/echo-bot",
                     "usr/local/libexec/tgwebhookd/poll-worker",
                     "usr/local/lib/tgwebhookd/echo.so",
                     "usr/local/lib/tgwebhookd/dice.so",
                     "usr/local/include/tgwebhookd.h",
                     "usr/local/lib/pkgconfig/tgwebhookd.pc"):
            assert os.path.exists(os.path.join(t, path)), path
        # a plugin builds against what was installed, as its README says
        pc = subprocess.run(
            ["pkg-config", "--cflags", "tgwebhookd",
             "--define-variable=includedir=%s/usr/local/include" % t],
            env=dict(os.environ, PKG_CONFIG_PATH=os.path.join(
                t, "usr/local/lib/pkgconfig")),
            capture_output=True, text=True)
        assert pc.returncode == 0, pc
        assert "-I%s/usr/local/include" % t in pc.stdout, pc.stdout
        so = os.path.join(t, "echo.so")
        cc = subprocess.run(["cc", "-shared", "-O2", "-o", so,
                             os.path.join(ROOT, "examples/plugins/echo.c")] +
                            pc.stdout.split(), capture_output=True, text=True)
        assert cc.returncode == 0, cc
        unit = open(os.path.join(t, "etc/systemd/system/"
                                 "tgwebhookd.service")).read()
        assert "ExecStart=/usr/local/sbin/tgwebhookd -c " \
            "/etc/tgwebhookd/tgwebhookd.conf" in unit
        # an existing configuration is never overwritten
        conf = os.path.join(t, "etc/tgwebhookd/tgwebhookd.conf")
        with open(conf, "w") as f:
            f.write("; mine\n")
        out = subprocess.run(["make", "-s", "-C", ROOT, "install",
                              "BUILD=" + BUILD, "SANITIZE=" + SANITIZE,
                              "DESTDIR=" + t],
                             capture_output=True, text=True)
        assert out.returncode == 0
        assert open(conf).read() == "; mine\n"
        out = subprocess.run(["make", "-s", "-C", ROOT, "uninstall",
                              "DESTDIR=" + t], capture_output=True, text=True)
        assert not os.path.exists(os.path.join(t, "usr/local/sbin/"
                                               "tgwebhookd"))
        assert os.path.exists(conf)


def test_reload_names_keys_that_need_a_restart():
    with Daemon(HANDLERS) as d:
        text = open(d.conf).read()
        text = text.replace("domain = localhost", "domain = other.example")
        text = text.replace("reply = hi {from.first_name}", "reply = new")
        with open(d.conf, "w") as f:
            f.write(text)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload done")
        assert "take effect only after a restart: domain" in d.log()
        # the handler changed; the domain in force did not (the
        # certificate for localhost was accepted and is still served)
        status, _, _, body = d.deliver(message("/start", 1))
        assert json.loads(body)["text"] == "new"
        assert len(d.emu.calls_of("setWebhook")) == 1
