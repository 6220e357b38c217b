"""Hostile clients: one address holding many connections cannot take the
places Telegram needs."""

import json
import socket
import time

from harness import Daemon, message


def hold(port, n, source):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
            socks.append(s)
        except OSError:
            s.close()
    return socks


def still_open(socks):
    """Connections the server has not closed (it closes refused ones at
    once)."""
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                continue
        except BlockingIOError:
            pass
        except OSError:
            continue
        alive += 1
    return alive


def test_idle_flood_from_one_address_leaves_telegram_served():
    # Telegram is 127.0.0.1; the attacker is 127.0.0.2
    d = Daemon("[handler.a]\nreply = ok\n", trusted="127.0.0.1/32",
               start=False)
    with d:
        text = open(d.conf).read().replace("[server]\n", "[server]\n"
                                           "per_ip_limit = 8\n")
        open(d.conf, "w").write(text)
        d.start()
        attacker = hold(d.port, 200, "127.0.0.2")
        time.sleep(0.5)
        assert still_open(attacker) <= 8, still_open(attacker)
        d.wait_log("per_ip_limit reached")
        t0 = time.time()
        status, _, _, body = d.deliver(message("hi", 1))
        assert status == 200 and json.loads(body)["text"] == "ok"
        assert time.time() - t0 < 1.0
        # Telegram itself is never limited
        conns = [d.emu._connect() for _ in range(40)]
        for c in conns:
            c.connect()
        for i, c in enumerate(conns):
            c.request("POST", "/" + d.emu.webhook["url"].split("/", 3)[3],
                      body=json.dumps(message("x", 100 + i)),
                      headers={"X-Telegram-Bot-Api-Secret-Token":
                               d.emu.webhook["secret"]})
            assert c.getresponse().status == 200
            c.close()
        for s in attacker:
            s.close()
