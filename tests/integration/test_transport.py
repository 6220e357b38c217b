"""The transport against hostile or careless clients: TLS 1.2's suites,
X-Forwarded-For over several lines, strict HTTP framing (no request
smuggling), limits for connections nobody vouches for, and an inline
answer whose connection dropped, and no more connection threads than
the cores the daemon may run on."""

import glob
import os
import subprocess

from harness import Daemon, message

HANDLERS = "[handler.start]\ncommands = /start\nreply = hi\n"


def s_client(port, *args):
    """(handshake succeeded, openssl's report) for openssl s_client with
    args, sending nothing."""
    p = subprocess.run(["openssl", "s_client", "-connect",
                        "127.0.0.1:%d" % port, "-servername", "localhost"] +
                       list(args), input=b"", capture_output=True,
                       timeout=20)
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    ok = p.returncode == 0 and "Cipher is (NONE)" not in out and \
        "New, TLSv1" in out
    return ok, out


def test_tls_1_2_is_ecdhe_with_aead_only():
    with Daemon(HANDLERS) as d:
        # static RSA key exchange (no forward secrecy), CBC with SHA-1,
        # and ECDHE with CBC: refused
        for cipher in ("AES128-SHA", "AES256-GCM-SHA384",
                       "AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA",
                       "ECDHE-RSA-AES256-SHA384", "DHE-RSA-AES128-GCM-SHA256"):
            ok, out = s_client(d.port, "-tls1_2", "-cipher", cipher)
            assert not ok, "%s accepted:\n%s" % (cipher, out)
        for cipher in ("ECDHE-RSA-AES128-GCM-SHA256",
                       "ECDHE-RSA-AES256-GCM-SHA384",
                       "ECDHE-RSA-CHACHA20-POLY1305"):
            ok, out = s_client(d.port, "-tls1_2", "-cipher", cipher)
            assert ok, "%s refused:\n%s" % (cipher, out)
            assert "Cipher is " + cipher in out, out
        ok, out = s_client(d.port, "-tls1_3")
        assert ok and "New, TLSv1.3" in out, out


def tls_exchange(port, data, timeout=5):
    """Sends raw bytes over TLS and reads until the server closes (or
    timeout): everything that came back, and whether it closed."""
    import socket
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port),
                                                 timeout=timeout),
                        server_hostname="localhost")
    s.sendall(data)
    out, closed = b"", False
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            out += chunk
    except (socket.timeout, ssl.SSLError, ConnectionError):
        pass
    finally:
        s.close()
    return out, closed


def test_smuggled_requests_refused():
    import json
    import urllib.parse
    from harness import message
    with Daemon(HANDLERS) as d:
        w = d.emu.webhook
        path = urllib.parse.urlsplit(w["url"]).path
        head = ("POST %s HTTP/1.1\r\nHost: localhost:8443\r\n"
                "X-Telegram-Bot-Api-Secret-Token: %s\r\n" % (path, w["secret"]))
        body = json.dumps(message("/start", 31)).encode()
        smuggled = (head + "Content-Length: %d\r\n\r\n" % len(body)).encode() \
            + body
        # Content-Length and Transfer-Encoding together
        out, closed = tls_exchange(d.port, (head + "Content-Length: %d\r\n"
                                            "Transfer-Encoding: chunked\r\n\r\n"
                                            % (len(smuggled) + 5)).encode() +
                                   b"0\r\n\r\n" + smuggled)
        assert out.startswith(b"HTTP/1.1 400") and closed, out
        assert out.count(b"HTTP/1.1 ") == 1, out
        # two lengths
        out, closed = tls_exchange(d.port, (head + "Content-Length: 0\r\n"
                                            "Content-Length: %d\r\n\r\n" %
                                            len(smuggled)).encode() + smuggled)
        assert out.startswith(b"HTTP/1.1 400") and closed, out
        assert out.count(b"HTTP/1.1 ") == 1, out
        # bare LF line endings
        lf = (head + "Content-Length: %d\r\n\r\n" % len(body)).replace(
            "\r\n", "\n").encode() + body
        out, closed = tls_exchange(d.port, lf)
        assert out.startswith(b"HTTP/1.1 400") and closed, out
        assert "both Content-Length and Transfer-Encoding" in d.log()
        assert "Content-Length given twice" in d.log()
        assert "a line not ended by CRLF" in d.log()
        # the smuggled update never ran: delivered now, it is new
        assert "update 31" not in d.log()
        status, _, _, answer = d.deliver(message("/start", 31))
        assert status == 200 and json.loads(answer)["text"] == "hi"
        # a decoded %3F or %00, or no leading '/', is not the secret path
        for target in (path + "%3Fx", path + "%00", "%2F" + path[1:],
                       path[1:]):
            out, _ = tls_exchange(d.port, (head.replace(path, target, 1) +
                                           "Content-Length: %d\r\n"
                                           "Connection: close\r\n\r\n"
                                           % len(body)).encode() + body)
            assert out.startswith((b"HTTP/1.1 404", b"HTTP/1.1 400")), \
                (target, out)


def test_chunked_body_with_bare_lf_refused_and_nothing_pipelined_runs():
    """libmicrohttpd 0.9.75 takes chunk lines ended by a bare LF and ran
    the request pipelined behind them; a chunked body is now refused with
    411 at its headers, and the connection closed."""
    import json
    import urllib.parse
    from harness import message
    with Daemon(HANDLERS) as d:
        w = d.emu.webhook
        path = urllib.parse.urlsplit(w["url"]).path
        head = ("POST %s HTTP/1.1\r\nHost: localhost:8443\r\n"
                "X-Telegram-Bot-Api-Secret-Token: %s\r\n" % (path, w["secret"]))
        first = json.dumps(message("/start", 41)).encode()
        second = json.dumps(message("/start", 42)).encode()
        pipelined = (head + "Content-Length: %d\r\n\r\n" %
                     len(second)).encode() + second
        out, closed = tls_exchange(
            d.port, (head + "Transfer-Encoding: chunked\r\n\r\n").encode() +
            b"%x\n%s\n0\n\n" % (len(first), first) + pipelined)
        assert out.startswith(b"HTTP/1.1 411") and closed, out
        assert out.count(b"HTTP/1.1 ") == 1, out
        assert b"\r\nConnection: close\r\n" in out, out
        d.wait_log("a chunked body (Transfer-Encoding: chunked)")
        # neither update reached a handler: delivered now, each is new
        assert "update 41" not in d.log() and "update 42" not in d.log()
        for uid in (41, 42):
            status, _, _, answer = d.deliver(message("/start", uid))
            assert status == 200 and json.loads(answer)["text"] == "hi"
        # and no follow-up went out for either
        assert d.emu.calls_of("sendMessage") == []


def test_limits_hold_with_trusted_networks_empty():
    """With trusted_networks empty nobody is Telegram by address: every
    address (but trusted_proxies) is limited to per_ip_limit connections
    and the short idle timeout until a request on the connection passes
    the gate; a proved connection keeps the long timeout."""
    import json
    import time
    from harness import eventually, message
    from test_abuse import hold, still_open
    d = Daemon("[handler.a]\nreply = ok\n", trusted="", start=False)
    with d:
        text = open(d.conf).read().replace("[server]\n", "[server]\n"
                                           "per_ip_limit = 8\n")
        open(d.conf, "w").write(text)
        d.start()
        # Telegram, on a kept-alive connection of its own: proved by its
        # first update
        telegram = d.emu._connect()
        path = "/" + d.emu.webhook["url"].split("/", 3)[3]
        hdrs = {"X-Telegram-Bot-Api-Secret-Token": d.emu.webhook["secret"],
                "Content-Type": "application/json"}
        telegram.request("POST", path, body=json.dumps(message("x", 1)),
                         headers=hdrs)
        answer = telegram.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["text"] \
            == "ok"
        t0 = time.time()
        attacker = hold(d.port, 200, "127.0.0.2")
        # the ones over the limit are closed as soon as they are accepted
        assert eventually(lambda: still_open(attacker) <= 8, 5), \
            still_open(attacker)
        d.wait_log("per_ip_limit reached")
        # the attacker's idle connections are closed after 10 s, not
        # connection_timeout's 75 s
        deadline = time.time() + 30
        while still_open(attacker) > 0 and time.time() < deadline:
            time.sleep(0.2)
        assert still_open(attacker) == 0
        assert time.time() - t0 < 25
        # Telegram's proved connection is still open and served
        telegram.request("POST", path, body=json.dumps(message("y", 2)),
                         headers=hdrs)
        answer = telegram.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["text"] \
            == "ok"
        telegram.close()
        for s in attacker:
            s.close()


def slow_daemon(texts, shutdown_timeout="5s"):
    """A daemon whose exec handler `slow` touches slow.started<ID> once it
    has update ID, waits for the test to create slow.go<ID>, then prints
    a sendMessage of each of texts (each with one %s: the update id).
    The daemon, not started, and the handler's path."""
    import os
    d = Daemon("", webhook="reply_deadline = 20s", start=False)
    handler = os.path.join(d.dir, "slow")
    calls = "".join("printf '{\"method\":\"sendMessage\",\"chat_id\":%%s,"
                    "\"text\":\"%s\"}\\n' \"$TGW_CHAT_ID\" "
                    "\"$TGW_UPDATE_ID\"\n" % t for t in texts)
    with open(handler, "w") as f:
        f.write("#!/bin/sh\ncat >/dev/null\n"
                "touch \"$0.started$TGW_UPDATE_ID\"\n"
                "while [ ! -e \"$0.go$TGW_UPDATE_ID\" ]; do sleep 0.02; done\n"
                + calls)
    os.chmod(handler, 0o700)
    text = open(d.conf).read().replace("shutdown_timeout = 5s",
                                       "shutdown_timeout = " +
                                       shutdown_timeout)
    with open(d.conf, "w") as f:
        f.write(text + "[handler.slow]\nexec = %s\ntimeout = 30s\n" %
                handler)
    return d, handler


def test_inline_answer_survives_a_dropped_connection():
    """Telegram's connection drops (FIN, then RST) while a slow handler
    runs: the inline answer it computed is sent as a follow-up, once; the
    redelivery is answered 200 and queues nothing twice."""
    import json
    import os
    import re
    import socket
    import ssl
    import struct
    import urllib.parse
    from harness import eventually, message, texts
    d, handler = slow_daemon(["answer %s", "more %s"])
    with d:
        d.start()
        w = d.emu.webhook
        path = urllib.parse.urlsplit(w["url"]).path
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        for uid, reset in ((71, False), (72, True)):
            body = json.dumps(message("hello", uid)).encode()
            s = ctx.wrap_socket(socket.create_connection(
                ("127.0.0.1", d.port), timeout=5), server_hostname="x")
            s.sendall(("POST %s HTTP/1.1\r\nHost: localhost:8443\r\n"
                       "X-Telegram-Bot-Api-Secret-Token: %s\r\n"
                       "Content-Length: %d\r\n\r\n" % (path, w["secret"],
                                                       len(body))).encode() +
                      body)
            # the handler runs (its connection suspended meanwhile)
            assert eventually(lambda: os.path.exists(
                handler + ".started%d" % uid), 10)
            if reset:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             struct.pack("ii", 1, 0))
                s.close()   # RST
            else:
                s.close()   # FIN
            open(handler + ".go%d" % uid, "w").close()
            want = ["answer %d" % uid, "more %d" % uid]
            assert eventually(lambda: all(t in texts(d) for t in want),
                              10), (texts(d), d.log()[-2000:])
            # seen by the server before it answered, or by libmicrohttpd
            # when it went back to the connection
            assert re.search(r"update %d: (Telegram closed the connection|"
                             r"the connection closed) before its inline "
                             r"answer was sent: it goes out as a follow-up"
                             % uid, d.log()), d.log()[-2000:]
            # Telegram delivers it again: handled already, nothing queued
            # twice
            status, _, _, again = d.deliver(message("hello", uid))
            assert status == 200 and again == b""
            d.wait_log("update %d: already handled" % uid)
        for uid in (71, 72):
            for t in ("answer %d" % uid, "more %d" % uid):
                assert texts(d).count(t) == 1, texts(d)


def test_stop_while_a_handler_outlives_shutdown_timeout():
    """SIGTERM while a handler runs past shutdown_timeout (reply_deadline
    is longer): the daemon waits for the runner to resume the request
    and exits 0 (libmicrohttpd aborted the process when stopped with a
    connection suspended), and the answer is not lost."""
    import os
    import threading
    from harness import eventually, message, rows, texts
    d, handler = slow_daemon(["late answer %s"], shutdown_timeout="1s")
    with d:
        d.start()
        got = []

        def deliver():
            try:
                got.append(d.deliver(message("x", 81)))
            except OSError as e:
                got.append(e)
        t = threading.Thread(target=deliver, daemon=True)
        t.start()
        assert eventually(lambda: os.path.exists(handler + ".started81"),
                          10)
        d.proc.terminate()
        d.wait_log("still in flight after shutdown_timeout")
        open(handler + ".go81", "w").close()
        rc = d.stop(sig=0, timeout=30)    # no second SIGTERM
        d.check_clean(rc)
        t.join(10)
        inline = got and not isinstance(got[0], OSError) and \
            b"late answer 81" in got[0][3]
        queued = "late answer 81" in texts(d) or \
            any(r[0] == "sendMessage" for r in rows(d))
        assert inline or queued, (got, texts(d), rows(d), d.log()[-2000:])


def mhd_threads(d):
    """The names of the daemon's libmicrohttpd threads."""
    names = []
    for task in glob.glob("/proc/%d/task/*" % d.proc.pid):
        try:
            with open(os.path.join(task, "comm")) as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return sorted(n for n in names if n.startswith("MHD-"))


def test_connection_threads_no_more_than_its_cores():
    """[server] threads = 2 (the default) on one core (taskset): one
    connection thread, said in the log; the admin listener has its
    own.  With two cores, the pool of two."""
    with Daemon(HANDLERS, wrap=["taskset", "-c", "0"]) as d:
        assert mhd_threads(d) == ["MHD-single", "MHD-single"], \
            mhd_threads(d)
        d.wait_log("[server] threads = 2, but this process may run on 1 "
                   "core: 1 connection thread")
        status, _, _, body = d.deliver(message("/start", 1))
        assert status == 200 and b"sendMessage" in body, (status, body)
    if len(os.sched_getaffinity(0)) >= 2:
        with Daemon(HANDLERS, wrap=["taskset", "-c", "0,1"]) as d:
            assert mhd_threads(d) == ["MHD-single", "MHD-worker",
                                      "MHD-worker"], mhd_threads(d)
