"""bench/polling_bench.py: the two update sources side by side, in one run,
against the Bot API emulator, with the same reply handler:

- updates a second: N updates (N chats) through getUpdates (all queued
  at once, answered as follow-ups), and N delivered to the webhook one at
  a time over one kept-alive TLS connection (answered inline), and the
  daemon's CPU per update for each (the emulator's is not counted);
- latency: from an update being available (pushed into the emulator's
  queue; handed to the webhook) to its reply reaching the Bot API (the
  sendMessage call; the inline answer), one update at a time.

The outbox is opened up (rate 1000/s, no per-chat interval) so that
Telegram's limits, the same for both, do not hide the sources' own cost.
Both daemons log at `[log] level = info`, the default and what
webhook_bench.py runs (the tests' harness writes debug, which logs a
line per delivered follow-up that the webhook's inline answer does not
have); BENCH_LOG_LEVEL changes it.
A measurement, not a test: compare the two figures of one run."""

import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from harness import Daemon, message  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, "bench"))
from webhook_bench import cpu_ticks  # noqa: E402

N = int(os.environ.get("N", "2000"))
SAMPLES = int(os.environ.get("SAMPLES", "100"))
REPLY = "[handler.start]\ncommands = /start\nreply = Hello, {from.first_name}!\n"
OUTBOX = "[outbox]\nrate = 1000\nchat_interval = 0\nmax_inflight = 256\n"
LOG_LEVEL = os.environ.get("BENCH_LOG_LEVEL", "info")


def start(d):
    """Starts d with the bench's log level in place of the harness's."""
    with open(d.conf) as f:
        text = f.read()
    assert "[log]\nlevel = debug\n" in text
    with open(d.conf, "w") as f:
        f.write(text.replace("[log]\nlevel = debug\n",
                             "[log]\nlevel = %s\n" % LOG_LEVEL))
    d.start()


def polling():
    d = Daemon(REPLY, tls=False, register=False, start=False,
               extra="[bot]\nsource = polling\n[polling]\ntimeout = 10s\n" +
               OUTBOX)
    with d:
        start(d)
        c0 = cpu_ticks([d.proc.pid])
        t0 = time.time()
        for i in range(1, N + 1):
            d.emu.push_update(message("/start", i, chat_id=100000 + i))
        sent = d.emu.wait_calls("sendMessage", N, timeout=N / 10 + 60)
        rate = N / (sent[-1].time - t0)
        cpu = cpu_us(cpu_ticks([d.proc.pid]) - c0)
        lat = []
        for i in range(SAMPLES):
            before = len(d.emu.calls_of("sendMessage"))
            t = time.time()
            d.emu.push_update(message("/start", N + 1 + i, chat_id=7))
            got = d.emu.wait_calls("sendMessage", before + 1, timeout=10)
            lat.append(got[before].time - t)
            time.sleep(0.01)
    return rate, cpu, lat


def webhook():
    d = Daemon(REPLY, extra=OUTBOX, start=False)
    with d:
        start(d)
        c0 = cpu_ticks([d.proc.pid])
        t0 = time.time()
        for i in range(1, N + 1):
            status, _, _, body = d.deliver(message("/start", i,
                                                   chat_id=100000 + i))
            assert status == 200 and b"sendMessage" in body, (status, body)
        rate = N / (time.time() - t0)
        cpu = cpu_us(cpu_ticks([d.proc.pid]) - c0)
        lat = []
        for i in range(SAMPLES):
            t = time.time()
            status, _, _, body = d.deliver(message("/start", N + 1 + i,
                                                   chat_id=7))
            lat.append(time.time() - t)
            assert b"sendMessage" in body
    return rate, cpu, lat


def cpu_us(ticks):
    """The daemon's CPU per update, in microseconds."""
    return ticks * 1e6 / os.sysconf("SC_CLK_TCK") / N


def row(name, rate, cpu, lat, base=None):
    lat = sorted(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print("| %s | %d | %.0f | %.1f | %s | %.1f | %.1f |" % (
        name, N, rate, cpu, "%.2f" % (cpu / base) if base else "-",
        statistics.median(lat) * 1000, p99 * 1000))


def main():
    print("| source | updates | updates/s | CPU µs/update | × webhook | "
          "available -> reply at the Bot API, median ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    polled = polling()
    hooked = webhook()
    row("polling (getUpdates, follow-ups)", *polled, base=hooked[1])
    row("webhook (one TLS connection, inline)", *hooked)


if __name__ == "__main__":
    main()
