"""A Bot API emulator that plays Telegram for tgwebhookd's tests and demo.

Two halves, as botapi-facts.md describes the real server:

* the Bot API (HTTP on loopback): /bot<token>/<method> with parameters as
  JSON, urlencoded or multipart; setWebhook keeps the uploaded certificate
  and checks url, port, secret_token like the real server; every call is
  recorded; answers can be scripted (429 with retry_after, 5xx, 403, ...);
* getUpdates (long polling) as Telegram serves it: push_update() puts an
  Update in the queue; an offset confirms (and forgets) every update below
  it, a negative one keeps only the last -offset; timeout, limit and
  allowed_updates; 409 while a webhook is set, and to a getUpdates that a
  newer one terminated;
* webhook delivery: deliver() POSTs an Update in Telegram's wire format
  (compact, ASCII with \\u escapes, update_id first then a newline) to the
  registered URL over TLS that trusts only the uploaded certificate, with
  the host name checked, the secret token header, keep-alive connections,
  and records last_error_message the way Telegram words it.

Standard library only.
"""

import email.parser
import email.policy
import http.client
import http.server
import json
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse

ALLOWED_PORTS = (443, 80, 88, 8443)
SECRET_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                   "0123456789_-")


def free_port():
    """A TCP port free on loopback now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _true(v):
    return v is True or str(v).lower() in ("true", "1", "yes")


def wire_format(update):
    """Telegram's byte-exact body: {"update_id":N,\\n"type":{...}}."""
    if isinstance(update, (bytes, bytearray)):
        return bytes(update)
    rest = {k: v for k, v in update.items() if k != "update_id"}
    body = '{"update_id":%d,\n' % update["update_id"]
    inner = json.dumps(rest, separators=(",", ":"), ensure_ascii=True)
    return (body + inner[1:]).encode("ascii")


class Call:
    def __init__(self, method, params, content_type, files):
        self.method = method
        self.params = params
        self.content_type = content_type
        self.files = files
        self.time = time.time()

    def __repr__(self):
        return "Call(%s, %r)" % (self.method, self.params)


class Emulator:
    def __init__(self, token, username="TestBot", forward=None):
        self.token = token
        self.username = username
        # (host, port) to connect to instead of the URL's: a port forward,
        # as a router would do from 8443 to the daemon's listen port.
        self.forward = forward
        self.calls = []
        self.cv = threading.Condition()
        self.scripts = {}
        self.webhook = None
        self.last_error = None
        self.next_set_allowed = 0.0
        self.cert_dir = tempfile.TemporaryDirectory(prefix="tgw-emu-")
        self.message_id = 1000
        self._conn = None
        self._conn_lock = threading.Lock()
        self.httpd = None
        # Telegram's limits, enforced when set: sends to one chat at least
        # 1 s apart, 20 a minute to a group, 30 a second in all; a call
        # over a limit gets 429 with retry_after, counted in .violations.
        self.enforce_limits = False
        self.violations = 0
        self.sends = []             # (time, chat) of accepted sends
        self.paid_sends = []        # the same, with allow_paid_broadcast
        self.latency = 0.0          # seconds each call takes
        # getUpdates: the queue of unconfirmed updates, the id the next
        # pushed one gets, the stored allowed_updates, the newest poll
        self.updates = []
        self.next_update_id = 1
        self.allowed_updates = None
        self.poll_serial = 0
        self.polls_active = 0

    # ---- Bot API half -------------------------------------------------
    def start(self):
        emu = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body leave in two writes: without NODELAY a
            # client's delayed ACK adds 40 ms to every answer
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_GET(self):
                emu._serve(self)

            def do_POST(self):
                emu._serve(self)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                # a client killed mid-request (the daemon, SIGKILLed by
                # a test) is no emulator error
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.httpd.server_address[1]

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
        with self._conn_lock:
            if self._conn:
                self._conn.close()
        self.cert_dir.cleanup()

    def script(self, method, *answers):
        """Queue answers for the next calls of method: each is
        (status, body_dict[, headers]) or the string "hang" (no answer
        for 30 s) or "garbage"."""
        with self.cv:
            self.scripts.setdefault(method.lower(), []).extend(answers)

    def calls_of(self, method):
        with self.cv:
            return [c for c in self.calls if c.method.lower() ==
                    method.lower()]

    def wait_calls(self, method, n=1, timeout=10.0):
        deadline = time.time() + timeout
        with self.cv:
            while True:
                got = [c for c in self.calls
                       if c.method.lower() == method.lower()]
                if len(got) >= n:
                    return got
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError(
                        "expected %d %s call(s), got %d: %r" %
                        (n, method, len(got), self.calls))
                self.cv.wait(left)

    def _parse(self, req, body):
        ctype = req.headers.get("Content-Type", "")
        params, files = {}, {}
        query = urllib.parse.urlsplit(req.path).query
        for k, v in urllib.parse.parse_qsl(query):
            params[k] = v
        if ctype.startswith("application/json"):
            obj = json.loads(body or b"{}")
            if not isinstance(obj, dict):
                raise ValueError("JSON body is not an object")
            params.update(obj)
        elif ctype.startswith("application/x-www-form-urlencoded"):
            for k, v in urllib.parse.parse_qsl(body.decode()):
                params[k] = v
        elif ctype.startswith("multipart/form-data"):
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                data = part.get_payload(decode=True)
                if part.get_filename() is not None:
                    files[name] = (part.get_filename(), data)
                else:
                    params[name] = data.decode()
        return params, files, ctype

    def _reply(self, req, status, obj, headers=None, raw=None):
        data = raw if raw is not None else json.dumps(obj).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            req.send_header(k, str(v))
        req.end_headers()
        req.wfile.write(data)

    def _serve(self, req):
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        path = urllib.parse.urlsplit(req.path).path
        prefix = "/bot%s/" % self.token
        if not path.startswith("/bot") or "/" not in path[4:]:
            return self._reply(req, 404, {"ok": False, "error_code": 404,
                                          "description": "Not Found"})
        if not path.startswith(prefix):
            return self._reply(req, 401, {"ok": False, "error_code": 401,
                                          "description": "Unauthorized"})
        method = path[len(prefix):]
        try:
            params, files, ctype = self._parse(req, body)
        except Exception as e:  # the real server answers 400
            return self._reply(req, 400, {
                "ok": False, "error_code": 400,
                "description": "Bad Request: %s" % e})
        call = Call(method, params, ctype, files)
        with self.cv:
            self.calls.append(call)
            self.cv.notify_all()
            queue = self.scripts.get(method.lower())
            scripted = queue.pop(0) if queue else None
        if scripted == "hang":
            time.sleep(30)
            return
        if scripted == "garbage":
            return self._reply(req, 200, None, raw=b"<html>oops</html>")
        if scripted is not None:
            status, obj = scripted[0], scripted[1]
            headers = scripted[2] if len(scripted) > 2 else None
            return self._reply(req, status, obj, headers)
        if self.latency:
            time.sleep(self.latency)
        if self.enforce_limits and method.lower().startswith(
                ("send", "forward", "copy")):
            paid = params.get("allow_paid_broadcast") in (True, "true",
                                                          "True", "1")
            limited = self._over_limit(str(params.get("chat_id")), paid)
            if limited:
                with self.cv:
                    self.violations += 1
                return self._reply(req, *self._error(
                    429, "Too Many Requests: retry after %d" % limited,
                    {"retry_after": limited})[:2],
                    {"Retry-After": limited})
        status, obj, headers = self._method(method.lower(), params, files)
        self._reply(req, status, obj, headers)

    def _over_limit(self, chat, paid=False):
        """Seconds to wait if this send breaks a limit, else 0 (and the
        send is counted).  A paid broadcast (allow_paid_broadcast) counts
        against 1000 a second instead of 30; the per-chat rules stay."""
        now = time.time()
        # 20 ms of tolerance for when this thread got to the request
        with self.cv:
            if paid:
                recent = [t for t, _ in self.paid_sends if now - t < 0.98]
                if len(recent) >= 1000:
                    return 1
            else:
                last_second = [t for t, _ in self.sends if now - t < 0.98]
                if len(last_second) >= 30:
                    return 1
            mine = [t for t, c in self.sends + self.paid_sends
                    if c == chat]
            mine.sort()
            if mine and now - mine[-1] < 0.98:
                return 1
            if chat.startswith(("-", "@")) and \
                    len([t for t in mine if now - t < 60.0]) >= 20:
                return 60 - int(now - mine[-20])
            (self.paid_sends if paid else self.sends).append((now, chat))
            return 0

    def _error(self, code, desc, params=None):
        obj = {"ok": False, "error_code": code, "description": desc}
        if params:
            obj["parameters"] = params
        headers = {"Retry-After": params["retry_after"]} if (
            params and "retry_after" in params) else None
        return code, obj, headers

    def _method(self, m, p, files):
        ok = lambda result, desc=None: (200, dict(
            {"ok": True, "result": result},
            **({"description": desc} if desc else {})), None)
        if m == "getme":
            return ok({"id": int(self.token.split(":")[0]), "is_bot": True,
                       "first_name": "Test", "username": self.username})
        if m == "setwebhook":
            return self._set_webhook(p, files)
        if m == "getupdates":
            return self._get_updates(p)
        if m == "deletewebhook":
            was = self.webhook is not None
            self.webhook = None
            if _true(p.get("drop_pending_updates")):
                with self.cv:
                    self.updates = []
            return ok(True, "Webhook was deleted" if was else
                      "Webhook is already deleted")
        if m == "getwebhookinfo":
            info = {"url": "", "has_custom_certificate": False,
                    "pending_update_count": 0}
            if self.webhook:
                w = self.webhook
                info.update(url=w["url"],
                            has_custom_certificate=w["cert"] is not None)
                if self.last_error:
                    info["last_error_date"] = self.last_error[0]
                    info["last_error_message"] = self.last_error[1]
                info["max_connections"] = w["max_connections"]
                info["ip_address"] = w.get("ip_address") or "127.0.0.1"
                if w["allowed_updates"]:
                    info["allowed_updates"] = w["allowed_updates"]
            return ok(info)
        if m.startswith("get"):
            return ok({})
        if "chat_id" in p and m.startswith(("send", "forward", "copy")):
            self.message_id += 1
            return ok({"message_id": self.message_id, "date": int(time.time()),
                       "chat": {"id": p["chat_id"]},
                       "text": p.get("text", "")})
        return ok(True)

    # Telegram's default: every type but these three (botapi-facts.md)
    NOT_BY_DEFAULT = ("chat_member", "message_reaction",
                      "message_reaction_count")

    def push_update(self, update):
        """Queues an Update (a dict; update_id given or the next one) for
        getUpdates.  Returns its update_id."""
        with self.cv:
            if "update_id" not in update:
                update = dict(update, update_id=self.next_update_id)
            self.next_update_id = max(self.next_update_id,
                                      update["update_id"] + 1)
            self.updates.append(update)
            self.cv.notify_all()
            return update["update_id"]

    def pending_updates(self):
        """The unconfirmed updates' ids, in queue order."""
        with self.cv:
            return [u["update_id"] for u in self.updates]

    def _wanted(self, update):
        kinds = [k for k in update if k != "update_id"]
        allowed = self.allowed_updates
        if not allowed:
            return not any(k in self.NOT_BY_DEFAULT for k in kinds)
        return any(k in allowed for k in kinds)

    def _get_updates(self, p):
        def num(name, default, lo, hi):
            try:
                v = int(p.get(name, default))
            except (TypeError, ValueError):
                raise ValueError("%s must be an integer" % name)
            return min(max(v, lo), hi)
        try:
            offset = num("offset", 0, -(1 << 62), 1 << 62)
            limit = num("limit", 100, 1, 100)
            timeout = num("timeout", 0, 0, 50)
            allowed = p.get("allowed_updates")
            if isinstance(allowed, str):
                allowed = json.loads(allowed) if allowed else []
        except ValueError as e:
            return self._error(400, "Bad Request: %s" % e)
        if self.webhook:
            return self._error(409, "Conflict: can't use getUpdates method "
                               "while webhook is active; use deleteWebhook "
                               "to delete the webhook first")
        deadline = time.time() + timeout
        with self.cv:
            self.poll_serial += 1
            mine = self.poll_serial
            self.polls_active += 1
            self.cv.notify_all()    # an older poll ends with 409
            try:
                if allowed is not None:
                    self.allowed_updates = list(allowed)
                # the updates Telegram would not make for this bot
                self.updates = [u for u in self.updates if self._wanted(u)]
                if offset > 0:
                    self.updates = [u for u in self.updates
                                    if u["update_id"] >= offset]
                elif offset < 0:
                    self.updates = self.updates[offset:]
                while True:
                    if self.poll_serial != mine:
                        return self._error(
                            409, "Conflict: terminated by other getUpdates "
                            "request; make sure that only one bot instance "
                            "is running")
                    if self.webhook:
                        return self._error(
                            409, "Conflict: terminated by setWebhook "
                            "request")
                    got = [u for u in self.updates
                           if self._wanted(u)][:limit]
                    left = deadline - time.time()
                    if got or left <= 0:
                        return 200, {"ok": True, "result": got}, None
                    self.cv.wait(left)
            finally:
                self.polls_active -= 1

    def _set_webhook(self, p, files):
        now = time.time()
        url = p.get("url", "")
        if url and now < self.next_set_allowed:
            return self._error(429, "Too Many Requests: retry after 1",
                               {"retry_after": 1})
        if not url:
            self.webhook = None
            return 200, {"ok": True, "result": True,
                         "description": "Webhook was deleted"}, None
        u = urllib.parse.urlsplit(url)
        if u.scheme != "https":
            return self._error(400, "Bad Request: bad webhook: An HTTPS URL "
                               "must be provided for webhook")
        if (u.port or 443) not in ALLOWED_PORTS:
            return self._error(400, "Bad Request: bad webhook: Webhook can be "
                               "set up only on ports 80, 88, 443 or 8443")
        secret = p.get("secret_token", "")
        if len(secret) > 256:
            return self._error(400, "Bad Request: secret token is too long")
        if any(ch not in SECRET_CHARS for ch in secret):
            return self._error(400, "Bad Request: secret token contains "
                               "unallowed characters")
        try:
            maxc = int(p.get("max_connections", 40))
        except ValueError:
            maxc = 1
        maxc = min(max(maxc, 1), 100)
        allowed = None
        if "allowed_updates" in p:
            try:
                allowed = json.loads(p["allowed_updates"])
            except ValueError:
                allowed = None
        cert = None
        if "certificate" in files:
            data = files["certificate"][1]
            if len(data) > 3 << 20:
                return self._error(400, "Bad Request: certificate size is "
                                   "too big (%d bytes)" % len(data))
            cert = "%s/cert.pem" % self.cert_dir.name
            with open(cert + ".new", "wb") as f:    # deliveries may be
                f.write(data)                       # reading the old one
            os.replace(cert + ".new", cert)
        self.next_set_allowed = now + 1
        self.webhook = {"url": url, "secret": secret, "cert": cert,
                        "max_connections": maxc, "allowed_updates": allowed,
                        "ip_address": p.get("ip_address"),
                        "drop_pending_updates": p.get(
                            "drop_pending_updates", "").lower() in
                        ("true", "1", "yes")}
        self.last_error = None
        with self.cv:
            self.cv.notify_all()    # a waiting getUpdates ends with 409
        with self._conn_lock:
            if self._conn:
                self._conn.close()
                self._conn = None
        return 200, {"ok": True, "result": True,
                     "description": "Webhook was set"}, None

    # ---- delivery half ------------------------------------------------
    def _context(self):
        w = self.webhook
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if w["cert"]:
            ctx.load_verify_locations(cafile=w["cert"])  # the only root
        else:
            ctx.load_default_certs()
        return ctx

    def _connect(self):
        w = self.webhook
        u = urllib.parse.urlsplit(w["url"])
        host, port = u.hostname, u.port or 443
        target = self.forward or (host, port)
        emu = self

        class Conn(http.client.HTTPSConnection):
            def connect(self):
                sock = socket.create_connection(target, timeout=self.timeout)
                # Headers and body leave in separate writes; without
                # NODELAY, Nagle and delayed ACKs add 40 ms to each request.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # For an IP host Python sends no SNI and checks the
                # certificate's IP names; for a name, SNI and DNS names.
                self.sock = emu._context().wrap_socket(sock,
                                                       server_hostname=host)

        return Conn(host, port, timeout=65)

    def deliver(self, update, timeout=65, headers=None, keepalive=True):
        """POSTs update (dict or raw bytes) to the webhook as Telegram
        would; returns (status, reason, headers dict, body bytes), or
        raises the connection error after recording last_error."""
        if not self.webhook:
            raise AssertionError("no webhook is set")
        w = self.webhook
        u = urllib.parse.urlsplit(w["url"])
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        body = wire_format(update)
        hdrs = {"Content-Type": "application/json",
                "Connection": "keep-alive",
                "Accept-Encoding": "gzip, deflate"}
        if w["secret"]:
            hdrs["X-Telegram-Bot-Api-Secret-Token"] = w["secret"]
        hdrs.update(headers or {})
        with self._conn_lock:
            for attempt in (1, 2):
                reused = keepalive and self._conn is not None
                conn = self._conn if reused else self._connect()
                self._conn = None
                conn.timeout = timeout
                try:
                    conn.request("POST", path, body=body, headers=hdrs)
                    resp = conn.getresponse()
                    data = resp.read()
                except ssl.SSLError as e:
                    conn.close()
                    self.last_error = (int(time.time()),
                                       "SSL error {%s}" % e.reason)
                    raise
                except socket.timeout:
                    conn.close()
                    self.last_error = (int(time.time()),
                                       "Read timeout expired")
                    raise
                except (ConnectionError, http.client.HTTPException) as e:
                    conn.close()
                    if reused and attempt == 1:
                        continue    # the server closed an idle connection
                    self.last_error = (int(time.time()),
                                       "Connection refused" if isinstance(
                                           e, ConnectionRefusedError)
                                       else "Webhook connection closed")
                    raise
                if keepalive and not resp.will_close:
                    self._conn = conn
                else:
                    conn.close()
                if not 200 <= resp.status < 300:
                    self.last_error = (int(time.time()),
                                       "Wrong response from the webhook: "
                                       "%d %s" % (resp.status, resp.reason))
                return (resp.status, resp.reason,
                        {k.lower(): v for k, v in resp.getheaders()}, data)
