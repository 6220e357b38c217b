"""Every row of DESIGN.md's "Behaviour at the edges" table."""

import json
import socket
import ssl
import urllib.parse

from harness import Daemon, message, raw_request

HANDLERS = "[handler.start]\ncommands = /start\nreply = hi\n"


def request(d, method="POST", path=None, body=b"{}", secret=True,
            headers=None):
    w = d.emu.webhook
    if path is None:
        path = urllib.parse.urlsplit(w["url"]).path
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: localhost:8443",
             "Content-Type: application/json",
             "Content-Length: %d" % len(body), "Connection: close"]
    if secret:
        lines.append("X-Telegram-Bot-Api-Secret-Token: %s" % w["secret"])
    lines += headers or []
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    out = raw_request(d.port, raw)
    head = out.split(b"\r\n", 1)[0].decode()
    return int(head.split()[1]), out


def test_wrong_path_404():
    with Daemon(HANDLERS) as d:
        status, out = request(d, path="/not-the-secret")
        assert status == 404
        assert out.endswith(b"\r\n\r\n"), out   # nothing else revealed
        assert request(d, path="/")[0] == 404
        real = urllib.parse.urlsplit(d.emu.webhook["url"]).path
        assert request(d, path=real + "x")[0] == 404
        assert request(d, path=real[:-1])[0] == 404
        # a wrong path wins over a wrong method and a missing secret
        assert request(d, method="GET", path="/x", secret=False)[0] == 404
        assert "wrong path" in d.log()


def test_secret_token_403():
    with Daemon(HANDLERS) as d:
        assert request(d, secret=False)[0] == 403
        assert request(d, secret=False, headers=[
            "X-Telegram-Bot-Api-Secret-Token: nope"])[0] == 403
        assert "secret token missing or wrong" in d.log()


def test_untrusted_source_403():
    with Daemon(HANDLERS, trusted="149.154.160.0/20, 91.108.4.0/22") as d:
        status, _ = request(d)
        assert status == 403
        assert "source not in trusted_networks" in d.log()
        assert "from 127.0.0.1" in d.log()


def test_trusted_proxy_forwarded_for():
    with Daemon(HANDLERS, trusted="149.154.160.0/20",
                webhook="trusted_proxies = 127.0.0.1") as d:
        body = json.dumps(message("/start", 1)).encode()
        status, out = request(d, body=body, headers=[
            "X-Forwarded-For: 149.154.167.220"])
        assert status == 200, out
        assert b'"sendMessage"' in out
        status, _ = request(d, body=body, headers=[
            "X-Forwarded-For: 149.154.167.220, 8.8.8.8"])
        assert status == 403
        # a proxy that appends its own line (HAProxy's option forwardfor)
        # after the client's forged one: the lines are one list
        status, _ = request(d, body=body, headers=[
            "X-Forwarded-For: 149.154.167.220",
            "X-Forwarded-For: 8.8.8.8"])
        assert status == 403
        assert "rejected POST from 8.8.8.8" in d.log()


def test_method_not_post_405():
    with Daemon(HANDLERS) as d:
        assert request(d, method="GET", body=b"")[0] == 405
        assert request(d, method="PUT")[0] == 405


def test_control_characters_in_a_method_are_escaped_in_the_log():
    """A rejected request's method is logged: its ESC, BEL, DEL, C1 and
    U+2028 arrive escaped, never raw (a terminal showing the log would
    obey them; a U+2028 breaks the line in some viewers)."""
    with Daemon(HANDLERS) as d:
        method = b"G\x1b[2J\x1b]0;pwn\x07E\x7fT\xc2\x9b\xe2\x80\xa8X"
        w = d.emu.webhook
        path = urllib.parse.urlsplit(w["url"]).path.encode()
        out = raw_request(d.port, method + b" " + path + b" HTTP/1.1\r\n"
                          b"Host: localhost:8443\r\nContent-Length: 0\r\n"
                          b"X-Telegram-Bot-Api-Secret-Token: " +
                          w["secret"].encode() +
                          b"\r\nConnection: close\r\n\r\n")
        assert out.split(b" ")[1] == b"405", out
        d.wait_log("G\\x1b[2J\\x1b]0;pwn\\x07E\\x7fT\\u009b\\u2028X")
        with open(d.logpath, "rb") as f:
            raw = f.read()
        for bad in (b"\x1b", b"\x07", b"\x7f", b"\xc2\x9b", b"\xe2\x80\xa8"):
            assert bad not in raw, (bad, raw[-2000:])


def test_body_over_limit_413():
    with Daemon(HANDLERS, webhook="max_body = 64K") as d:
        big = b'{"update_id":1,"x":"' + b"a" * (70 << 10) + b'"}'
        assert request(d, body=big)[0] == 413
        # chunked, with no Content-Length: 411 before a byte of it is read
        w = d.emu.webhook
        path = urllib.parse.urlsplit(w["url"]).path
        head = ("POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                "\r\nX-Telegram-Bot-Api-Secret-Token: %s\r\n"
                "Connection: close\r\n\r\n" % (path, w["secret"])).encode()
        chunk = b"a" * 8192
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk)
                        for _ in range(10)) + b"0\r\n\r\n"
        out = raw_request(d.port, head + body)
        assert out.startswith(b"HTTP/1.1 411"), out[:100]


def test_large_legit_update_accepted():
    import os
    from harness import CORPUS
    with open(os.path.join(CORPUS, "160-very-large-message.json"),
              "rb") as f:
        raw = f.read()
    with Daemon("[handler.any]\nreply = got it\n") as d:
        status, _, _, body = d.deliver(raw)
        assert status == 200 and json.loads(body)["text"] == "got it"


def test_large_header_block_accepted():
    """A header block of 4 KiB (Telegram sends some 300 bytes; proxies add
    their lines) fits the per-connection memory, which the bench keeps
    small: the update is answered inline."""
    with Daemon(HANDLERS) as d:
        pad = ["X-Pad-%d: %s" % (i, "p" * 200) for i in range(20)]
        status, out = request(d, body=json.dumps(message("/start", 1))
                              .encode(), headers=pad)
        assert status == 200 and b'"sendMessage"' in out, out


def test_header_block_over_connection_memory_431():
    """The per-connection memory is 12 KiB (each connection's buffer is
    private memory, 100 connections' 1.2 MiB): a 6 KiB header block is
    still answered, one of 11 KiB is refused with 431, which says what is
    too large, and logged; the connection after it is served."""
    with Daemon(HANDLERS) as d:
        body = json.dumps(message("/start", 1)).encode()
        six = ["X-Pad-%d: %s" % (i, "p" * 500) for i in range(12)]
        status, out = request(d, body=body, headers=six)
        assert status == 200 and b'"sendMessage"' in out, out
        eleven = ["X-Pad-%d: %s" % (i, "p" * 1000) for i in range(11)]
        status, out = request(d, body=body, headers=eleven)
        assert status == 431, out[:200]
        assert b"header was too big" in out, out[:300]
        status, out = request(d, body=json.dumps(message("/start", 2))
                              .encode())
        assert status == 200, out[:200]


def test_not_json_400():
    with Daemon(HANDLERS) as d:
        assert request(d, body=b"this is not json")[0] == 400
        assert request(d, body=b'{"message":{}}')[0] == 400
        assert request(d, body=b'{"update_id":"7"}')[0] == 400
        assert request(d, body=b"[1]")[0] == 400
        log = d.log()
        assert "bad update from 127.0.0.1" in log
        assert "no integer update_id" in log


def test_unknown_type_200():
    with Daemon(HANDLERS) as d:
        status, _, _, body = d.deliver({"update_id": 9,
                                        "brand_new_type": {"x": 1}})
        assert status == 200 and body == b""
        assert "type 'brand_new_type' is unknown" in d.log()


def test_no_handler_matches_200():
    with Daemon(HANDLERS) as d:
        status, _, _, body = d.deliver(message("just text", 3))
        assert status == 200 and body == b""


def test_duplicate_update_not_handled_again():
    with Daemon(HANDLERS) as d:
        first = d.deliver(message("/start", 77))
        again = d.deliver(message("/start", 77))
        assert json.loads(first[3])["method"] == "sendMessage"
        assert again[0] == 200 and again[3] == b""
        # ids are a set, not a high-water mark: an older id still runs
        older = d.deliver(message("/start", 5))
        assert json.loads(older[3])["method"] == "sendMessage"


def test_never_410_never_redirect():
    with Daemon(HANDLERS) as d:
        for method, path in (("GET", "/"), ("POST", "/x"), ("DELETE", None),
                             ("POST", None)):
            status, _ = request(d, method=method, path=path)
            assert status not in (410, 301, 302, 307, 308), status


def test_tls_1_2_and_1_3_only():
    with Daemon(HANDLERS) as d:
        for version, ok in ((ssl.TLSVersion.TLSv1_2, True),
                            (ssl.TLSVersion.TLSv1_3, True)):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.minimum_version = ctx.maximum_version = version
            s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            t = ctx.wrap_socket(s, server_hostname="localhost")
            assert t.version() in ("TLSv1.2", "TLSv1.3")
            t.close()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        try:
            ctx.wrap_socket(s, server_hostname="localhost")
            raise AssertionError("TLS 1.1 was accepted")
        except (ssl.SSLError, ConnectionError):
            pass
        finally:
            s.close()


def test_tls_sessions_resume():
    """A returning client resumes its TLS session (session tickets), on
    TLS 1.2 and 1.3: no full handshake, no RSA signature."""
    with Daemon(HANDLERS) as d:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.minimum_version = ctx.maximum_version = version
            session = None
            for attempt in range(2):
                s = socket.create_connection(("127.0.0.1", d.port),
                                             timeout=5)
                t = ctx.wrap_socket(s, server_hostname="localhost",
                                    session=session)
                # TLS 1.3 tickets come after the handshake: one request
                t.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert t.recv(4096).startswith(b"HTTP/1.1 ")
                assert t.session_reused == (attempt == 1), (version, attempt)
                session = t.session
                t.close()


def test_plain_http_behind_proxy():
    with Daemon(HANDLERS, tls=False, register=False) as d:
        d.emu.webhook = {"url": "https://localhost:8443/x", "secret": ""}
        body = json.dumps(message("/start", 1)).encode()
        out = raw_request(d.port, b"POST /x HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body,
                          tls=False)
        # path and secret were generated: this request has neither
        assert out.startswith(b"HTTP/1.1 404"), out[:80]
        # with them, plain HTTP serves updates as TLS does
        from harness import post_update, stored_secrets
        path, secret = stored_secrets(d.store)
        out = post_update(d.port, message("/start", 2), path, secret,
                          tls=False)
        assert out.startswith(b"HTTP/1.1 200"), out[:80]
        assert b'"method":"sendMessage"' in out and b'"text":"hi"' in out
