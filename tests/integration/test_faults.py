"""Faults under the store and the process: the store's disk full (the
webhook answered 503 with Retry-After, so Telegram retries and nothing is
lost), and SIGKILL at random points while updates are handled and their
follow-ups written and sent, a hundred times over."""

import os
import random
import signal
import sqlite3
import subprocess
import threading
import time

from harness import message, outbox_daemon, rows, texts


def set_fsize(pid, limit):
    subprocess.run(["prlimit", "--pid", str(pid), "--fsize=%s:unlimited"
                    % limit], check=True)


def test_store_disk_full_answers_503_then_recovers():
    d = outbox_daemon(3)
    with d:
        # every file write past its first byte now fails (EFBIG), as on a
        # full disk; the daemon ignores SIGXFSZ and sees the error
        set_fsize(d.proc.pid, 1)
        for attempt in range(2):
            status, _, headers, body = d.deliver(message("x", 21, chat_id=21))
            assert status == 503, (status, body)
            assert headers.get("retry-after") == "5", headers
            assert body == b""      # nothing inline: it would be a loss
        set_fsize(d.proc.pid, "unlimited")
        # Telegram's next retry is handled in full
        status, _, _, body = d.deliver(message("x", 21, chat_id=21))
        assert status == 200 and b'"m21-1"' in body
        d.emu.wait_calls("sendMessage", 2)
        time.sleep(0.5)
        assert texts(d) == ["m21-2", "m21-3"]
        # (the log file was full too: what was logged meanwhile is lost)


def integrity(d):
    db = sqlite3.connect(os.path.join(d.store, "tgwebhookd.db"))
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def test_sigkill_at_random_points_100_times():
    d = outbox_daemon(2)      # one inline call, one follow-up each
    rng = random.Random(20261125)
    answered = set()          # update ids Telegram got a 200 for
    lock = threading.Lock()
    with d:
        # registered once; restarts need not register again (the
        # certificate and the secrets are kept in the store)
        text = open(d.conf).read().replace("register = on", "register = off")
        open(d.conf, "w").write(text)
        d.register = False
        uid = [1000]

        def telegram(stop):
            """Delivers new updates, and again any not answered 200."""
            owed = []
            while not stop.is_set():
                if owed:
                    u = owed.pop(0)
                else:
                    with lock:
                        uid[0] += 1
                        u = uid[0]
                try:
                    status = d.deliver(message("x", u, chat_id=u),
                                       timeout=5)[0]
                except Exception:
                    status = None
                if status == 200:
                    with lock:
                        answered.add(u)
                else:
                    owed.append(u)
                time.sleep(0.03)    # a few hundred follow-ups in all
            return owed

        for kill in range(100):
            stop = threading.Event()
            owed = []
            t = threading.Thread(target=lambda: owed.extend(telegram(stop)))
            t.start()
            time.sleep(rng.uniform(0.0, 0.25))
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait()
            d.logf.close()
            d.proc = None
            stop.set()
            t.join(10)
            assert integrity(d) == "ok", "after kill %d" % kill
            d.start()
            # what Telegram still owes us, it delivers again
            for u in owed:
                assert d.deliver(message("x", u, chat_id=u))[0] == 200
                answered.add(u)
        # everything answered has all its follow-ups sent: none lost
        want = {"m%d-2" % u for u in answered}
        deadline = time.time() + 120
        while not want <= set(texts(d)):
            assert time.time() < deadline, sorted(want - set(texts(d)))[:10]
            time.sleep(0.2)
        # a call in flight at the last kill was sent, but its row waits
        # to be sent again: the outbox empties once that is done
        while rows(d, "state = 0"):
            assert time.time() < deadline, rows(d, "state = 0")
            time.sleep(0.2)
        sent = texts(d)
        dupes = len(sent) - len(set(sent))
        print("# %d updates over 100 SIGKILLs: %d follow-ups, all sent; %d "
              "sent twice (killed between sending and recording)"
              % (len(answered), len(want), dupes))
        assert not rows(d, "state = 0")
