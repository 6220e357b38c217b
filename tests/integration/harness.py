"""Integration test harness: runs the real tgwebhookd binary against the
Bot API emulator, on free loopback ports, in a temporary directory."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))

import botapi_emu  # noqa: E402

TOKEN = "123456789:AAtest-TOKEN_abcdefghijklmnopqrstuv"
BUILD = os.environ.get("TGW_BUILD", os.path.join(ROOT, "build"))
CORPUS = os.path.join(ROOT, "tests", "corpus", "updates")


def binary():
    return os.path.join(BUILD, "tgwebhookd")


class Skip(Exception):
    """Raised by a test that cannot run on this machine; its text says
    what is missing.  run.py reports it as a skip, never as a pass."""


def skip(reason):
    raise Skip(reason)


def corpus(name):
    import json
    with open(os.path.join(CORPUS, name), "rb") as f:
        return json.load(f)


def message(text, update_id, chat_id=42, entities=None, user_id=7):
    m = {"message_id": update_id, "from": {"id": user_id, "is_bot": False,
                                           "first_name": "Ann"},
         "chat": {"id": chat_id, "type": "private", "first_name": "Ann"},
         "date": int(time.time()), "text": text}
    if entities is not None:
        m["entities"] = entities
    elif text.startswith("/"):
        n = len(text.split(" ")[0].encode("utf-16-le")) // 2
        m["entities"] = [{"offset": 0, "length": n, "type": "bot_command"}]
    return {"update_id": update_id, "message": m}


def callback(data, update_id, chat_id=42, user_id=7, message_id=100):
    """A callback_query: user_id pressed a button of message_id."""
    return {"update_id": update_id, "callback_query": {
        "id": "cq%d" % update_id, "chat_instance": "ci1", "data": data,
        "from": {"id": user_id, "is_bot": False, "first_name": "U%d" % user_id},
        "message": {"message_id": message_id, "date": int(time.time()),
                    "chat": {"id": chat_id, "type": "private"},
                    "text": "(the bot's message)"}}}


def dead_letters(d):
    """(update_id, handler, reason, body) of each dead letter, in order."""
    import sqlite3
    db = sqlite3.connect(os.path.join(d.store, "tgwebhookd.db"))
    try:
        return db.execute("SELECT update_id, handler, reason, body FROM "
                          "dead_updates ORDER BY id").fetchall()
    finally:
        db.close()


def compile_plugin(d, name, source):
    """Builds a plugin from C source in d's directory; its path."""
    src = os.path.join(d.dir, name + ".c")
    out = os.path.join(d.dir, name + ".so")
    with open(src, "w") as f:
        f.write(source)
    jansson = subprocess.run(["pkg-config", "--cflags", "jansson"],
                             capture_output=True, text=True).stdout.split()
    subprocess.run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-O1",
                    "-I" + os.path.join(ROOT, "src")] + jansson +
                   ["-o", out, src], check=True)
    os.chmod(out, 0o755)
    return out


def plugin_path(name):
    return os.path.join(BUILD, "plugins", name + ".so")


class Daemon:
    """tgwebhookd with a generated config; .emu is its Telegram."""

    def __init__(self, handlers, webhook="", extra="", tls=True,
                 register=True, username="TestBot", env=None, start=True,
                 emu=None, store=None, trusted="127.0.0.0/8", wrap=None):
        self.tmp = tempfile.TemporaryDirectory(prefix="tgw-it-")
        self.dir = self.tmp.name
        self.port = botapi_emu.free_port()
        self.admin_port = botapi_emu.free_port()
        self.emu = emu or botapi_emu.Emulator(
            TOKEN, forward=("127.0.0.1", self.port)).start()
        self.emu.forward = ("127.0.0.1", self.port)
        self.store = store or os.path.join(self.dir, "store")
        self.conf = os.path.join(self.dir, "tgwebhookd.conf")
        self.logpath = os.path.join(self.dir, "daemon.log")
        self.proc = None
        text = ("[bot]\napi_url = %s\n%sapi_timeout = 3s\n"
                "[webhook]\ndomain = localhost\nport = 8443\n"
                "listen = 127.0.0.1:%d\ntrusted_networks = %s\n"
                "tls = %s\nregister = %s\n%s\n"
                "[server]\nshutdown_timeout = 5s\n"
                "[admin]\nlisten = 127.0.0.1:%d\n"
                "[store]\ndir = %s\n[log]\nlevel = debug\n%s\n%s\n" % (
                    self.emu.url,
                    "username = %s\n" % username if username else "",
                    self.port, trusted, "on" if tls else "off",
                    "on" if register else "off", webhook,
                    self.admin_port, self.store,
                    extra, handlers))
        with open(self.conf, "w") as f:
            f.write(text)
        self.env = dict(os.environ, TGWEBHOOKD_TOKEN=TOKEN)
        self.env.pop("JOURNAL_STREAM", None)
        self.env.update(env or {})
        self.register = register
        self.wrap = wrap or []      # e.g. valgrind and its options
        if start:
            self.start()

    def start(self, wait_register=True):
        self.logf = open(self.logpath, "ab")
        since = self.logf.tell()    # a restart appends: wait for its lines
        self.proc = subprocess.Popen(self.wrap + [binary(), "-c", self.conf],
                                     stdout=self.logf, stderr=self.logf,
                                     env=self.env)
        slow = 10 if self.wrap else 1
        self.wait_log("serving", 15 * slow, since)
        if self.register and wait_register:
            self.wait_log("webhook registered", 15 * slow, since)

    def log(self, since=0):
        with open(self.logpath, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def wait_log(self, text, timeout=10.0, since=0):
        """Waits for text in the log (from byte offset since)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in self.log(since):
                return
            if self.proc.poll() is not None:
                raise AssertionError("daemon exited %s before logging %r:\n%s"
                                     % (self.proc.returncode, text,
                                        self.log()))
            time.sleep(0.02)
        raise AssertionError("no %r in the log after %ss:\n%s" %
                             (text, timeout, self.log()))

    def deliver(self, update, **kw):
        return self.emu.deliver(update, **kw)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            raise AssertionError("daemon did not stop in %ss" % timeout)
        finally:
            self.logf.close()
        self.proc = None
        return rc

    def kill(self):
        """SIGKILL: the daemon dies where it is, as in a crash."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.logf.close()
        self.proc = None

    def close(self):
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        finally:
            self.emu.stop()
            self.tmp.cleanup()

    def __enter__(self):
        return self

    def check_clean(self, rc):
        """A stop by SIGTERM must exit 0 with no sanitizer report (a leak
        found by LeakSanitizer makes the exit code non-zero too)."""
        log = self.log()
        for bad in ("AddressSanitizer", "runtime error:",
                    "LeakSanitizer", "UndefinedBehaviorSanitizer"):
            assert bad not in log, "sanitizer report:\n" + log
        assert rc == 0, "daemon exited %s:\n%s" % (rc, log[-3000:])

    def __exit__(self, *exc):
        try:
            if self.proc is not None:
                rc = self.stop()
                if exc[0] is None:
                    self.check_clean(rc)
        finally:
            self.close()


def stored_secrets(store):
    """The webhook path and secret token the daemon generated and keeps."""
    import sqlite3
    db = sqlite3.connect(os.path.join(store, "tgwebhookd.db"))
    try:
        kept = dict(db.execute("SELECT name, value FROM secrets"))
    finally:
        db.close()
    return kept["webhook_path"], kept["secret_token"]


def post_update(port, update, path, secret, tls=True, indent=None):
    """POSTs an update the way Telegram would, without the emulator;
    returns the raw answer."""
    import json
    body = json.dumps(update, indent=indent).encode()
    head = ("POST /%s HTTP/1.1\r\nHost: localhost:8443\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n"
            "X-Telegram-Bot-Api-Secret-Token: %s\r\n"
            "Connection: close\r\n\r\n" % (path, len(body), secret))
    return raw_request(port, head.encode() + body, tls=tls)


def raw_request(port, data, tls=True, host="localhost", timeout=5,
                cafile=None):
    """Sends raw bytes, returns the raw answer (for requests Telegram
    would never send)."""
    import ssl
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s, server_hostname=host)
    try:
        s.sendall(data)
    except OSError:
        pass        # refused mid-request: the answer may still be readable
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out:
                head, _, rest = out.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        if len(rest) >= int(line.split(b":")[1]):
                            return out
    except socket.timeout:
        pass
    finally:
        s.close()
    return out


# ---- the outbox: exec handlers making calls, and what became of them ----

def calls_script(d, n, text="m"):
    """An exec handler printing n sendMessage calls to the update's
    chat."""
    path = os.path.join(d.dir, "calls")
    with open(path, "w") as f:
        f.write("#!/bin/sh\ncat >/dev/null\ni=1\nwhile [ $i -le %d ]; do\n"
                "printf '{\"method\":\"sendMessage\",\"chat_id\":%%s,"
                "\"text\":\"%s%%s-%%s\"}\\n' \"$TGW_CHAT_ID\" "
                "\"$TGW_UPDATE_ID\" $i\ni=$((i+1))\ndone\n" % (n, text))
    os.chmod(path, 0o700)
    return path


def outbox_daemon(n=3, outbox="", webhook=""):
    d = Daemon("", webhook=webhook, extra="[outbox]\n" + outbox,
               start=False)
    with open(d.conf, "a") as f:
        f.write("[handler.calls]\nexec = %s\n" % calls_script(d, n))
    d.start()
    return d


def texts(d, method="sendMessage"):
    return [c.params.get("text") for c in d.emu.calls_of(method)]


def rows(d, where="1"):
    import sqlite3
    db = sqlite3.connect(os.path.join(d.store, "tgwebhookd.db"))
    try:
        return db.execute("SELECT method, chat, state, attempts, last_error "
                          "FROM calls WHERE " + where + " ORDER BY id"
                          ).fetchall()
    finally:
        db.close()


def settle(d, timeout=10.0):
    """Waits until no follow-up is unsent, as a user reads the answers
    before typing on: a chat's next answer goes inline only then (README,
    "One chat's updates in order")."""
    assert eventually(lambda: rows(d, "state = 0") == [], timeout), \
        rows(d, "state = 0")


def eventually(probe, timeout=10.0):
    """probe()'s first truthy value, polling until timeout (state the
    daemon writes a moment after what the test waited for)."""
    deadline = time.time() + timeout
    while True:
        value = probe()
        if value or time.time() > deadline:
            return value
        time.sleep(0.05)
