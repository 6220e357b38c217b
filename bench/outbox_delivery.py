"""bench/outbox_delivery.py: how long tgwebhookd takes to deliver 1,000
messages to 1,000 chats against the emulator enforcing Telegram's 30
messages a second (the floor is 1000/30 = 33.3 s), and whether any got a
429.  A measurement, not a test."""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from harness import Daemon, binary  # noqa: E402

N = int(os.environ.get("N", "1000"))


def main():
    with Daemon("[handler.none]\ncommands = /none\nreply = x\n",
                ) as d:
        d.emu.enforce_limits = True
        path = os.path.join(d.dir, "broadcast.jsonl")
        with open(path, "w") as f:
            for chat in range(N):
                f.write(json.dumps({"method": "sendMessage",
                                    "chat_id": 10000 + chat,
                                    "text": "bulletin"}) + "\n")
        t0 = time.time()
        out = subprocess.run([binary(), "-c", d.conf, "--broadcast", path],
                             capture_output=True, text=True, env=d.env)
        queued = time.time() - t0
        assert out.returncode == 0, out
        sent = d.emu.wait_calls("sendMessage", N, timeout=N / 10 + 30)
        took = sent[-1].time - t0
        print("| messages | chats | queued in | delivered in | floor at "
              "30/s | 429s |")
        print("|---|---|---|---|---|---|")
        print("| %d | %d | %.2f s | %.1f s | %.1f s | %d |" % (
            N, N, queued, took, N / 30.0, d.emu.violations))


if __name__ == "__main__":
    main()
