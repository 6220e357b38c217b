"""Telegram opens up to max_connections (at most 100) keep-alive
connections, one request at a time on each."""

import json
import threading

from harness import Daemon, message


def test_100_concurrent_keepalive_connections():
    with Daemon("[handler.any]\nreply = {text}\n",
                webhook="max_connections = 100") as d:
        w = d.emu.webhook
        path = "/" + w["url"].split("/", 3)[3]
        conns = [d.emu._connect() for _ in range(100)]
        for c in conns:
            c.connect()       # all 100 open at once before any request
        errors, answers = [], []
        start = threading.Barrier(100)

        def client(i, conn):
            try:
                start.wait()
                for j in range(3):
                    uid = 1000 + i * 10 + j
                    conn.request("POST", path, body=json.dumps(
                        message("c%d r%d" % (i, j), uid, chat_id=i)),
                        headers={"X-Telegram-Bot-Api-Secret-Token":
                                 w["secret"],
                                 "Content-Type": "application/json"})
                    resp = conn.getresponse()
                    body = resp.read()
                    assert resp.status == 200, resp.status
                    assert json.loads(body)["text"] == "c%d r%d" % (i, j)
                    answers.append(uid)
            except Exception as e:   # collected and reported below
                errors.append(repr(e))
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(i, c))
                   for i, c in enumerate(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:5]
        assert len(answers) == 300
