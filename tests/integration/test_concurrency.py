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


def threads_of(pid):
    import os
    names = []
    for t in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/comm" % (pid, t)) as f:
            names.append(f.read().strip())
    return names


def test_handler_threads_start_on_demand_up_to_the_limit():
    import os
    with Daemon("", extra="[server]\nhandler_threads = 4\n",
                start=False) as d:
        # the slow handler notes when each run starts and ends
        runs = os.path.join(d.dir, "runs")
        script = os.path.join(d.dir, "slow")
        with open(script, "w") as f:
            f.write("#!/bin/sh\necho + >>%s\nsleep 0.5\necho - >>%s\n"
                    % (runs, runs))
        os.chmod(script, 0o700)
        with open(d.conf, "a") as f:
            f.write("[handler.slow]\ntext = ^slow$\nexec = %s\n"
                    "[handler.any]\nreply = {text}\n" % script)
        d.start()
        # quick handlers only so far: no handler thread runs
        before = threads_of(d.proc.pid)
        assert d.deliver(message("hi", 1))[0] == 200
        assert threads_of(d.proc.pid) == before
        # twelve slow updates at once: four threads start and run four
        # handlers at a time
        results = []

        def deliver(i):
            w = d.emu.webhook
            conn = d.emu._connect()
            conn.request("POST", "/" + w["url"].split("/", 3)[3],
                         body=json.dumps(message("slow", 10 + i,
                                                 chat_id=10 + i)),
                         headers={"X-Telegram-Bot-Api-Secret-Token":
                                  w["secret"],
                                  "Content-Type": "application/json"})
            results.append(conn.getresponse().status)
            conn.close()
        ts = [threading.Thread(target=deliver, args=(i,)) for i in range(12)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert results == [200] * 12, results
        running = most = 0
        for mark in open(runs).read().split():
            running += 1 if mark == "+" else -1
            most = max(most, running)
        assert most == 4, most
        added = sorted(threads_of(d.proc.pid))
        for name in before:
            added.remove(name)
        assert len(added) == 4, (before, added)
