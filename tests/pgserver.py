"""A PostgreSQL server of the tests' own (Debian's postgresql-15).

initdb in a temporary directory owned by an unprivileged user (tests run
as root, and postgres refuses root), listening on a unix socket in that
directory only (no TCP port), stopped at the end.  Roles:

- postgres: the superuser, trusted on the socket (fixtures only);
- tgw: a password (scram-sha-256), owner of database tgw: what a daemon
  uses, its password given by libpq's own means (a PGPASSFILE);
- tgw_noperm: a password, may connect to tgw but not create tables.

As a command, for tests/run.sh and a developer:
    python3 tests/pgserver.py start DIR   prints a conninfo (user postgres)
    python3 tests/pgserver.py stop DIR
"""

import os
import pwd
import shutil
import subprocess
import sys
import tempfile

BIN = os.environ.get("TGW_PG_BIN", "/usr/lib/postgresql/15/bin")
PORT = 5432
PASSWORD = "tgw-test-pw"


def available():
    """None if a server can be run here, else why not."""
    if not os.path.exists(os.path.join(BIN, "initdb")):
        return "no PostgreSQL server in %s (apt-get install postgresql-15)" % BIN
    return None


def _as_user():
    """The command prefix that runs as the server's unprivileged user."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "nobody", "--"]


class Server:
    def __init__(self, base=None):
        self.owned = base is None
        self.dir = base or tempfile.mkdtemp(prefix="tgw-pg-")
        self.data = os.path.join(self.dir, "data")
        self.sock = self.dir
        self.log = os.path.join(self.dir, "server.log")
        self.passfile = os.path.join(self.dir, "pgpass")

    # conninfo strings (never with a password: libpq reads passfile)
    def conninfo(self, user="postgres", dbname="tgw"):
        return "host=%s port=%d dbname=%s user=%s" % (self.sock, PORT,
                                                       dbname, user)

    def env(self, password=True):
        """Environment for a client that authenticates as tgw."""
        e = dict(os.environ)
        if password:
            e["PGPASSFILE"] = self.passfile
        return e

    def _run(self, cmd, **kw):
        return subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, cwd="/", **kw)

    def psql(self, sql, dbname="tgw"):
        out = self._run([os.path.join(BIN, "psql"), "-X", "-q", "-At",
                         "-v", "ON_ERROR_STOP=1", "-h", self.sock, "-p",
                         str(PORT), "-U", "postgres", "-d", dbname,
                         "-c", sql])
        return out.stdout.decode()

    def init(self):
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
        os.chmod(self.dir, 0o700)
        self._run(_as_user() + [os.path.join(BIN, "initdb"), "-D",
                                self.data, "-U", "postgres", "-A", "trust",
                                "-E", "UTF8", "--locale=C", "--no-sync"])
        hba = os.path.join(self.data, "pg_hba.conf")
        with open(hba, "w") as f:
            f.write("local all postgres trust\n"
                    "local all all scram-sha-256\n")
        return self

    def start(self):
        opts = ("-k %s -c listen_addresses='' -p %d -c fsync=off "
                "-c max_connections=60" % (self.sock, PORT))
        self._run(_as_user() + [os.path.join(BIN, "pg_ctl"), "-D",
                                self.data, "-l", self.log, "-o", opts, "-w",
                                "-t", "60", "start"])
        return self

    def stop(self):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            subprocess.run(_as_user() + [os.path.join(BIN, "pg_ctl"), "-D",
                                         self.data, "-m", "fast", "-w",
                                         "stop"], cwd="/",
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

    def setup(self):
        """Roles and the database, once after the first start."""
        self.psql("CREATE ROLE tgw LOGIN PASSWORD '%s';"
                  "CREATE ROLE tgw_noperm LOGIN PASSWORD '%s';"
                  % (PASSWORD, PASSWORD), dbname="postgres")
        self.psql("CREATE DATABASE tgw OWNER tgw", dbname="postgres")
        # made new, never through a name planted first: the directory
        # belongs to the server's user, this may run as root
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                     os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("*:*:*:tgw:%s\n*:*:*:tgw_noperm:%s\n"
                    % (PASSWORD, PASSWORD))
        return self

    def create_db(self, name, owner="tgw"):
        self.psql('CREATE DATABASE "%s" OWNER %s' % (name, owner),
                  dbname="postgres")
        return self.conninfo(user=owner, dbname=name)

    def destroy(self):
        self.stop()
        if self.owned:
            shutil.rmtree(self.dir, ignore_errors=True)


def start_new():
    """A server started and set up; the caller destroy()s it."""
    s = Server().init()
    try:
        s.start().setup()
    except BaseException:
        s.destroy()
        raise
    return s


def main(argv):
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        sys.exit("usage: pgserver.py start|stop DIR")
    s = Server(argv[2])
    if argv[1] == "stop":
        s.stop()
        return
    why = available()
    if why:
        sys.exit(why)
    try:
        s.init().start().setup()
    except subprocess.CalledProcessError as e:
        s.stop()
        sys.stderr.write(e.stdout.decode(errors="replace"))
        if os.path.exists(s.log):
            sys.stderr.write(open(s.log).read())
        sys.exit("pgserver: could not start PostgreSQL in %s" % s.dir)
    print(s.conninfo())


if __name__ == "__main__":
    main(sys.argv)
