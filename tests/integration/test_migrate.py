"""--migrate-store: a SQLite store moved into PostgreSQL.  A daemon on
SQLite keeps a conversation state (conf/form.conf's /form), a follow-up
the Bot API refuses for now (pending, with its attempts) and a dead
letter (a handler that fails); stopped, its store is copied into a fresh
PostgreSQL database; a daemon there serves the same webhook path and
secret token, delivers the pending call, and the operator's commands show
the dead letter and the state.  A second run refuses (nothing twice);
so do a directory that is no store and a configuration on SQLite."""

import os
import subprocess

from harness import (Daemon, binary, dead_letters, eventually, message,
                     rows, stored_secrets)

from test_pg import server
from test_state import form_handlers

BAD_GATEWAY = (502, {"ok": False, "error_code": 502,
                     "description": "Bad Gateway"})


def handlers(d):
    fail = os.path.join(d.dir, "fail")
    with open(fail, "w") as f:
        f.write("#!/bin/sh\ncat >/dev/null\nexit 3\n")
    os.chmod(fail, 0o700)
    return "[handler.fail]\ncommands = /fail\nexec = %s\n" % fail


def run(d, *args):
    p = subprocess.run([binary(), "-c", d.conf] + list(args),
                       capture_output=True, text=True, env=d.env,
                       timeout=60)
    for bad in ("Sanitizer", "runtime error:"):
        assert bad not in p.stderr, p.stderr
    return p.returncode, p.stdout, p.stderr


def on_pg(pg, d):
    with open(d.conf) as f:
        text = f.read()
    text = text.replace("[store]\n", "[store]\nbackend = postgresql\n"
                        "postgresql = %s\n" % pg.conninfo(user="tgw"), 1)
    with open(d.conf, "w") as f:
        f.write(text)


def test_migrate_sqlite_store_to_postgresql():
    pg = server()
    old = Daemon("", start=False)
    new = None
    try:
        with open(old.conf, "a") as f:
            f.write(handlers(old) + form_handlers())
        old.start()
        # /form's follow-up (its question, with the state) is refused
        # for now: it stays pending
        old.emu.script("sendMessage", *[BAD_GATEWAY] * 200)
        assert old.deliver(message("/form", 1))[0] == 200
        assert eventually(lambda: (lambda r: r and r[0][3] >= 1 and r)(
            rows(old, "state = 0")), 30), rows(old)
        assert old.deliver(message("/fail", 2))[0] == 200
        assert eventually(lambda: dead_letters(old), 30)
        old.check_clean(old.stop())
        attempts = rows(old, "state = 0")[0][3]
        path, secret = stored_secrets(old.store)

        new = Daemon("", start=False, env={"PGPASSFILE": pg.passfile})
        with open(new.conf, "a") as f:
            f.write(handlers(new) + form_handlers())
        on_pg(pg, new)
        # the configuration's backend must be postgresql
        rc, out, err = run(old, "--migrate-store", old.store)
        assert rc == 1 and "set [store] backend = postgresql" in err, err
        # a directory that is no store: refused, nothing made there
        empty = os.path.join(new.dir, "empty")
        os.mkdir(empty)
        rc, out, err = run(new, "--migrate-store", empty)
        assert rc == 1 and "--migrate-store %s: not a tgwebhookd SQLite " \
            "store (tgwebhookd.db: No such file or directory)" % empty \
            in err, err
        assert os.listdir(empty) == []
        # --force only with --migrate-store
        assert run(new, "--outbox", "--force")[0] == 2

        rc, out, err = run(new, "--migrate-store", old.store)
        assert rc == 0, err
        print("# " + out.replace("\n", "\n# "))
        for want in ("  pending calls: 1\n", "  dead calls: 0\n",
                     "  dead updates: 1 (0 already there)\n",
                     "  states: 1\n", "  calls already there (by key): 0"):
            assert want in out, out
        kept = dict(line.split("|", 1) for line in pg.psql(
            "SELECT name, value FROM tgw_secrets WHERE name IN "
            "('webhook_path', 'secret_token')").split())
        assert kept == {"webhook_path": path, "secret_token": secret}
        # the call as it was: its attempts, key and lane
        got = pg.psql("SELECT key, attempts, lane, state FROM "
                      "tgw_calls").split()
        assert got == ["u:1:0|%d|1|0" % attempts], got
        # a second run adds nothing twice
        rc, out2, err = run(new, "--migrate-store", old.store)
        assert rc == 1 and "moved into the PostgreSQL store already" in \
            err, err
        assert pg.psql("SELECT count(*) FROM tgw_calls").strip() == "1"
        assert pg.psql("SELECT count(*) FROM tgw_dead_updates"
                       ).strip() == "1"

        # the PostgreSQL daemon: the same webhook, the call delivered
        new.start()
        hook = new.emu.calls_of("setWebhook")[-1].params
        assert hook["url"].endswith("/" + path), hook
        assert hook["secret_token"] == secret
        sent = new.emu.wait_calls("sendMessage", 1, 30)
        assert sent[0].params["text"] == "What is your name?", sent
        rc, out, err = run(new, "--outbox")
        assert rc == 0 and "failed updates (handler failed; the update " \
            "is kept in the store's dead_updates): 1" in out, out
        assert " fail " in out, out
        rc, out, err = run(new, "--state", "42", "7")
        assert rc == 0 and out.startswith(
            "state of c42:u7: awaiting_name\n"), (out, err)
        # and it answers the next message in that state
        status, _, _, body = new.deliver(message("Ann", 3))
        assert status == 200, status
        assert eventually(lambda: any("Hello, Ann" in (c.params.get(
            "text") or "") for c in new.emu.calls_of("sendMessage")) or
            b"Hello, Ann" in body, 30)
        new.check_clean(new.stop())
        # --force copies again: what has a key (the call, delivered now)
        # or is the same (the failed update) is not added twice
        calls = pg.psql("SELECT count(*) FROM tgw_calls").strip()
        rc, out, err = run(new, "--migrate-store", old.store, "--force")
        assert rc == 0, err
        assert "  calls already there (by key): 1\n" in out and \
            "  dead updates: 0 (1 already there)\n" in out, out
        assert pg.psql("SELECT count(*) FROM tgw_calls").strip() == calls
        # a PostgreSQL store that serves another webhook: refused
        pg.psql("UPDATE tgw_secrets SET value = 'zq-theirs' WHERE name = "
                "'secret_token'; DELETE FROM tgw_secrets WHERE name = "
                "'migrated_from'")
        rc, out, err = run(new, "--migrate-store", old.store)
        assert rc == 1 and "the PostgreSQL store keeps a different " \
            "secret_token" in err and "--force replaces it" in err, err
        assert secret not in err and "zq-theirs" not in err, err
        assert pg.psql("SELECT value FROM tgw_secrets WHERE name = "
                       "'secret_token'").strip() == "zq-theirs"
    finally:
        if new is not None:
            new.close()
        old.close()
        pg.destroy()
