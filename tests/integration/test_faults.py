"""Faults under the store and the process: the store's disk full (the
webhook answered 503 with Retry-After, so Telegram retries and nothing is
lost), and SIGKILL at random points while updates are handled and their
follow-ups written and sent, a hundred times over."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request

from harness import (Daemon, calls_script, eventually, message,
                     outbox_daemon, rows, skip, texts)


def set_fsize(pid, limit):
    subprocess.run(["prlimit", "--pid", str(pid), "--fsize=%s:unlimited"
                    % limit], check=True)


def health(d):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" %
                                    d.admin_port, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


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
        status, h = health(d)
        assert status == 503 and "disk I/O error" in h["store"], h
        set_fsize(d.proc.pid, "unlimited")
        # Telegram's next retry is handled in full
        status, _, _, body = d.deliver(message("x", 21, chat_id=21))
        assert status == 200 and b'"m21-1"' in body
        # healthy again once writes go through
        ok = eventually(lambda: health(d)[0] == 200)
        assert ok, (health(d), d.log()[-3000:])
        # nothing sent twice: a later update's follow-ups to that chat go
        # out after anything queued before them (per-chat order)
        status, _, _, body = d.deliver(message("x", 22, chat_id=21))
        assert status == 200 and b'"m22-1"' in body
        d.emu.wait_calls("sendMessage", 4)
        assert texts(d) == ["m21-2", "m21-3", "m22-2", "m22-3"], texts(d)
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


def loop_ext4_store(d):
    """Puts d's store on a new ext4 file system (a loop device, mounted
    with errors=remount-ro in the daemon's own mount namespace), as a
    disk that the kernel turns read-only under a running daemon.  Skips
    the test where this machine cannot, saying what it lacks."""
    why = ("needs root for a loop device" if os.geteuid() != 0 else
           "needs /dev/loop-control (loop devices)"
           if not os.path.exists("/dev/loop-control") else
           "needs mount namespaces (unshare -m fails)"
           if subprocess.run(["unshare", "-m", "true"],
                             capture_output=True).returncode != 0 else None)
    if why is not None:
        d.close()
        skip(why)
    image = os.path.join(d.dir, "store.img")
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", image], check=True)
    os.makedirs(d.store, exist_ok=True)
    d.wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c",
              'mount -o loop,errors=remount-ro "$1" "$2" && shift 2 && '
              'exec "$@"', "sh", image, d.store]
    return image


def store_device(pid, store):
    """The block device under store, as the daemon's namespace sees it."""
    with open("/proc/%d/mountinfo" % pid) as f:
        for line in f:
            fields = line.split()
            if fields[4] == store:
                return fields[fields.index("-") + 2]
    raise AssertionError("%s is not mounted for pid %d" % (store, pid))


def test_store_turned_read_only_answers_503_and_loses_nothing():
    d = Daemon("", extra="[outbox]\n", start=False)
    image = loop_ext4_store(d)
    with open(d.conf, "a") as f:
        f.write("[handler.broken]\ntext = ^fail$\nexec = /bin/false\n"
                "[handler.calls]\nexec = %s\n" % calls_script(d, 3))
    with d:
        d.start()
        status, _, _, body = d.deliver(message("x", 31, chat_id=31))
        assert status == 200 and b'"m31-1"' in body
        d.emu.wait_calls("sendMessage", 2)
        assert health(d)[1]["store"] == "ok"
        # the kernel finds an error and makes the file system read-only
        # under the open store (ext4 errors=remount-ro)
        dev = os.path.basename(store_device(d.proc.pid, d.store))
        with open("/sys/fs/ext4/%s/trigger_fs_error" % dev, "w") as f:
            f.write("test: the store's disk fails")
        for attempt in range(2):
            status, _, headers, body = d.deliver(message("x", 32, chat_id=32))
            assert status == 503, (status, body)
            assert headers.get("retry-after") == "5", headers
            assert body == b""      # nothing inline: it would be a loss
        # a failed handler's update cannot be kept as a dead letter
        # either: 503 too, so Telegram delivers it again
        status = d.deliver(message("fail", 33, chat_id=33))[0]
        assert status == 503, status
        log = d.log()
        assert "update 33: handler broken failed: exited with status 1; " \
            "the update cannot be kept as a dead letter: store " in log
        assert "update 32: handler calls: its follow-ups cannot be queued: " \
            "store %s/tgwebhookd.db: queueing 2 call(s): " % d.store in log
        assert "disk I/O error (a write failed: see the kernel log" in log
        status, h = health(d)
        assert status == 503 and h["status"] == "unhealthy", h
        assert h["store"] == "keeping update 33 as a dead letter: disk I/O " \
            "error", h
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" %
                                    d.admin_port, timeout=5) as r:
            assert b"\ntgwebhookd_store_healthy 0\n" in r.read()
        # the operator repairs the disk and starts the daemon again;
        # Telegram, which got 503, delivers update 32 once more
        d.stop()
        subprocess.run(["e2fsck", "-fy", image], capture_output=True)
        d.start()
        status, _, _, body = d.deliver(message("x", 32, chat_id=32))
        assert status == 200 and b'"m32-1"' in body
        d.emu.wait_calls("sendMessage", 4)
        assert texts(d) == ["m31-2", "m31-3", "m32-2", "m32-3"]
        assert d.deliver(message("fail", 33, chat_id=33))[0] == 200
        assert "update 33: handler broken failed: exited with status 1; " \
            "the update is kept as a dead letter" in d.log()
        status, h = health(d)
        assert status == 200 and h["store"] == "ok", h
