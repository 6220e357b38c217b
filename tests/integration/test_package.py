"""The Debian packages (debian/, make deb): built, their contents and
metadata checked, lintian clean; then installed with apt, the service
started with a test configuration against the emulator, stopped, and the
packages purged, leaving the machine as it was.

Installing changes the machine's package state, so that part runs only
where it is allowed: as root, with CI=true (CI's throwaway machine) or
TGW_PACKAGE_INSTALL=1, and only when no tgwebhookd package or directory is
there already.  Both parts are skipped in the sanitizer run: the package
carries the optimised build, and `make test` runs them."""

import atexit
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from harness import ROOT, TOKEN, eventually, message, skip

import botapi_emu
from test_monitoring import check_against, scrape

ARCH = subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                      text=True).stdout.strip()
MULTIARCH = subprocess.run(["dpkg-architecture", "-qDEB_HOST_MULTIARCH"],
                           capture_output=True, text=True).stdout.strip()
with open(os.path.join(ROOT, "VERSION")) as _f:
    VERSION = _f.read().strip()
UNIT = "/lib/systemd/system/tgwebhookd.service"
DROPIN = "/lib/systemd/system/tgwebhookd.service.d/debian.conf"
CONF = "/etc/tgwebhookd/tgwebhookd.conf"
TOKEN_FILE = "/etc/tgwebhookd/token"
PLUGINDIR = "/usr/lib/%s/tgwebhookd" % MULTIARCH
# what systemd makes for StateDirectory= with DynamicUser=yes
STATE = "/var/lib/tgwebhookd"
PRIVATE_STATE = "/var/lib/private/tgwebhookd"
DYNAMIC_UID = 61184         # the first of systemd's dynamic user range

_built = {}
_created_private = []       # made by the test, removed after the purge


def skip_reason():
    if os.environ.get("TGW_SANITIZE"):
        return "sanitizer run: the package carries the optimised build " \
            "(make test builds and tests it)"
    for tool in ("dpkg-buildpackage", "dh", "lintian"):
        if shutil.which(tool) is None:
            return "no %s (make deps installs it)" % tool
    return None


def build():
    """make deb, once: {package name: .deb path}, and the .changes."""
    if not _built:
        out = tempfile.mkdtemp(prefix="tgw-deb-")
        atexit.register(shutil.rmtree, out, True)
        p = subprocess.run(["make", "-s", "--no-print-directory", "deb",
                            "DEBDIR=" + out], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0, "make deb failed:\n%s%s" % (
            p.stdout[-4000:], p.stderr[-4000:])
        for name in ("tgwebhookd", "tgwebhookd-dev"):
            path = os.path.join(out, "%s_%s_%s.deb" % (name, VERSION, ARCH))
            assert os.path.exists(path), "%s missing: %s" % (
                path, os.listdir(out))
            _built[name] = path
        _built["changes"] = os.path.join(out, "tgwebhookd_%s_%s.changes" %
                                         (VERSION, ARCH))
        _built["dir"] = out
    return _built


def deb_field(deb, field):
    return subprocess.run(["dpkg-deb", "-f", deb, field], capture_output=True,
                          text=True, check=True).stdout.strip()


def deb_files(deb):
    """{path: mode string} of a .deb's files."""
    out = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True,
                         text=True, check=True).stdout
    files = {}
    for line in out.splitlines():
        f = line.split()
        path = f[5][1:].rstrip("/") or "/"
        files[path] = f[0]
    return files


def deb_control(deb, name):
    d = tempfile.mkdtemp(prefix="tgw-ctl-")
    try:
        subprocess.run(["dpkg-deb", "-e", deb, d], check=True)
        with open(os.path.join(d, name)) as f:
            return f.read()
    finally:
        shutil.rmtree(d)


def deb_file_text(deb, path):
    return subprocess.run("dpkg-deb --fsys-tarfile %s | tar -xOf - .%s" %
                          (deb, path), shell=True, capture_output=True,
                          text=True, check=True).stdout


def test_package_contents_metadata_and_lintian():
    reason = skip_reason()
    if reason:
        skip(reason)
    with open(os.path.join(ROOT, "debian", "changelog")) as f:
        head = f.readline()
    assert head.startswith("tgwebhookd (%s) " % VERSION), \
        "debian/changelog's latest entry is not VERSION %s: %s" % (
            VERSION, head)
    b = build()
    main, dev = b["tgwebhookd"], b["tgwebhookd-dev"]
    for deb in (main, dev):
        assert deb_field(deb, "Version") == VERSION
        assert deb_field(deb, "Architecture") == ARCH
    depends = deb_field(main, "Depends")
    for lib in ("libmicrohttpd12", "libjansson4", "libcurl4", "libssl3",
                "libsqlite3-0", "libinih1", "libpcre2-8-0", "python3"):
        assert re.search(r"\b%s\b" % re.escape(lib), depends), depends
    assert "libjansson-dev" in deb_field(dev, "Depends")

    files = deb_files(main)
    executables = ["/usr/sbin/tgwebhookd", "/usr/libexec/tgwebhookd/echo-bot",
                   "/usr/libexec/tgwebhookd/about-bot",
                   "/usr/libexec/tgwebhookd/poll-worker"]
    plain = [UNIT, DROPIN, CONF, PLUGINDIR + "/dice.so",
             PLUGINDIR + "/echo.so",
             "/usr/share/man/man8/tgwebhookd.8.gz",
             "/usr/share/man/man5/tgwebhookd.conf.5.gz",
             "/usr/share/tgwebhookd/prometheus/tgwebhookd-rules.yml",
             "/usr/share/tgwebhookd/grafana/tgwebhookd.json",
             "/usr/share/doc/tgwebhookd/examples/echo.c",
             "/usr/share/doc/tgwebhookd/copyright"]
    for path in executables:
        assert files.get(path) == "-rwxr-xr-x", (path, files.get(path))
    for path in plain:
        assert files.get(path) == "-rw-r--r--", (path, files.get(path))
    # nothing of a local installation, no state shipped (systemd makes it)
    assert not [p for p in files if p.startswith("/usr/local")]
    assert STATE not in files and "/etc/systemd/system" not in files
    devfiles = deb_files(dev)
    assert "/usr/include/tgwebhookd.h" in devfiles
    pc = "/usr/lib/%s/pkgconfig/tgwebhookd.pc" % MULTIARCH
    assert pc in devfiles
    pctext = deb_file_text(dev, pc)
    assert "plugindir=%s\n" % PLUGINDIR in pctext and \
        "Version: %s\n" % VERSION in pctext, pctext

    # the configuration is a conffile, and names what the package ships
    assert deb_control(main, "conffiles").split() == [CONF]
    conf = deb_file_text(main, CONF)
    assert not re.search(r"^token_file", conf, re.M), \
        "token_file set: the unit's dynamic user cannot read it"
    for path in re.findall(r"^;?(?:exec|plugin|worker) = (\S+)", conf, re.M):
        assert path in files, "the configuration names %s, not shipped" % path
    unit = deb_file_text(main, UNIT)
    assert "ExecStart=/usr/sbin/tgwebhookd -c %s\n" % CONF in unit
    assert "LoadCredential=token:%s\n" % TOKEN_FILE in unit
    assert "ConditionPathExists=%s\n" % TOKEN_FILE in \
        deb_file_text(main, DROPIN)
    postinst = deb_control(main, "postinst")
    assert "deb-systemd-helper enable 'tgwebhookd.service'" in postinst
    assert "deb-systemd-invoke $_dh_action 'tgwebhookd.service'" in postinst
    postrm = deb_control(main, "postrm")
    assert "rm -rf %s" % PRIVATE_STATE in postrm

    # lintian: no error, no warning (an override would carry its reason)
    p = subprocess.run(["lintian", "--fail-on", "error,warning",
                        "--display-info", b["changes"]],
                       capture_output=True, text=True, timeout=300)
    tags = [ln for ln in p.stdout.splitlines() if re.match(r"[EW]: ", ln)]
    assert p.returncode == 0 and not tags, "lintian:\n%s%s" % (
        p.stdout, p.stderr)
    print("# lintian: %d info tag(s), no errors or warnings" %
          len([ln for ln in p.stdout.splitlines() if ln.startswith("I: ")]))


# ---- install, run the service, purge ----

def install_skip_reason():
    if os.geteuid() != 0:
        return "not root"
    if os.environ.get("CI") != "true" and \
            os.environ.get("TGW_PACKAGE_INSTALL") != "1":
        return "installing a package changes the machine: runs with " \
            "CI=true (a throwaway CI machine) or TGW_PACKAGE_INSTALL=1"
    for name in ("tgwebhookd", "tgwebhookd-dev"):
        st = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name],
                            capture_output=True, text=True).stdout
        if st and "not-installed" not in st:
            return "package %s is on this machine already (%s): left " \
                "alone" % (name, st)
    for path in ("/etc/tgwebhookd", STATE, PRIVATE_STATE):
        if os.path.lexists(path):
            return "%s exists already: left alone" % path
    return None


def machine_state(debs):
    """What the packages and the service could change: each of their
    paths and the systemd enablement state, with its kind and owner."""
    paths = set()
    for deb in debs:
        paths.update(deb_files(deb))
    paths.update(["/etc/tgwebhookd", TOKEN_FILE, STATE, PRIVATE_STATE,
                  "/var/lib/private"])
    for top in ("/etc/systemd/system",
                "/var/lib/systemd/deb-systemd-helper-enabled",
                "/var/lib/systemd/deb-systemd-helper-masked"):
        for d, dirs, names in os.walk(top):
            paths.update(os.path.join(d, n) for n in dirs + names)
    state = {}
    for p in sorted(paths):
        try:
            st = os.lstat(p)
            state[p] = (st.st_mode, st.st_uid)
        except FileNotFoundError:
            pass
    return state


def unit_settings(paths):
    """[Service] and [Unit] settings of a unit and its drop-ins, in order:
    [(key, value)]."""
    out = []
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line and line[0] not in "#;[" and "=" in line:
                    k, v = line.split("=", 1)
                    out.append((k, v))
    return out


def run_as_the_unit(settings):
    """Without systemd as PID 1 (containers, this CI's VM), runs the
    unit's ExecStartPre and ExecStart the way systemd would: its
    ConditionPathExists, the credential, the state directory of a dynamic
    user, an unprivileged uid, its UMask, $NOTIFY_SOCKET (READY=1 waited
    for), and SIGTERM to stop.  The rest of the sandbox is not applied."""
    s = dict(settings)
    assert s["DynamicUser"] == "yes" and s["Type"] == "notify"
    for k, v in settings:
        if k == "ConditionPathExists":
            assert os.path.exists(v), "condition %s not met" % v
    cred_name, cred_src = s["LoadCredential"].split(":", 1)
    run = tempfile.mkdtemp(prefix="tgw-unit-")
    log = os.path.join(run, "daemon.log")
    proc = notify = None
    if not os.path.exists("/var/lib/private"):
        _created_private.append("/var/lib/private")  # rmdir'd after purge
    try:
        os.chmod(run, 0o755)
        creds = os.path.join(run, "credentials")
        os.mkdir(creds)
        shutil.copy(cred_src, os.path.join(creds, cred_name))
        os.chmod(os.path.join(creds, cred_name), 0o400)
        os.chown(os.path.join(creds, cred_name), DYNAMIC_UID, DYNAMIC_UID)
        os.chown(creds, DYNAMIC_UID, DYNAMIC_UID)
        os.chmod(creds, 0o500)
        os.makedirs("/var/lib/private", mode=0o700, exist_ok=True)
        os.mkdir(PRIVATE_STATE, int(s["StateDirectoryMode"], 8))
        os.chown(PRIVATE_STATE, DYNAMIC_UID, DYNAMIC_UID)
        os.symlink("private/" + s["StateDirectory"], STATE)
        notify_path = os.path.join(run, "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        os.chmod(notify_path, 0o777)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "CREDENTIALS_DIRECTORY": creds, "NOTIFY_SOCKET": notify_path}
        # In its own mount namespace the service sees /var/lib/private
        # (0700 on the host) as systemd shows it to a dynamic user: a 0755
        # tmpfs holding only its own state directory.
        keep = os.path.join(run, "keep")
        os.mkdir(keep)
        wrap = ["unshare", "--mount", "--propagation", "private", "sh",
                "-ec", 'mount --bind %s "$0"; mount -t tmpfs -o mode=0755 '
                'tmpfs /var/lib/private; mkdir %s; mount --bind "$0" %s; '
                'umask %s; exec setpriv --reuid=%d --regid=%d '
                '--clear-groups -- "$@"' % (
                    PRIVATE_STATE, PRIVATE_STATE, PRIVATE_STATE, s["UMask"],
                    DYNAMIC_UID, DYNAMIC_UID), keep]
        pre = subprocess.run(wrap + s["ExecStartPre"].split(), env=env,
                             cwd="/", capture_output=True, text=True,
                             timeout=30)
        assert pre.returncode == 0 and "configuration OK" in pre.stdout, \
            "ExecStartPre: %s%s" % (pre.stdout, pre.stderr)
        with open(log, "wb") as logf:
            proc = subprocess.Popen(wrap + s["ExecStart"].split(), env=env,
                                    cwd="/", stdout=logf, stderr=logf)
        notify.settimeout(0.5)
        messages = ""
        deadline = time.time() + 30
        while "READY=1" not in messages and time.time() < deadline:
            assert proc.poll() is None, "exited %s:\n%s" % (
                proc.returncode, open(log).read())
            try:
                messages += notify.recv(4096).decode() + "\n"
            except socket.timeout:
                pass
        assert "READY=1" in messages, "no READY=1:\n" + open(log).read()
        yield proc, log
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        assert rc == 0, "exited %s on SIGTERM:\n%s" % (rc, open(log).read())
        st = os.stat(os.path.join(PRIVATE_STATE, "tgwebhookd.db"))
        assert st.st_uid == DYNAMIC_UID and st.st_mode & 0o077 == 0, \
            "store owned by %d, mode %o" % (st.st_uid, st.st_mode)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if notify is not None:
            notify.close()
        shutil.rmtree(run)


def apt(*args):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    p = subprocess.run(["apt-get", "-q", "-y", "-o",
                        "DPkg::Lock::Timeout=300"] + list(args),
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, "apt-get %s:\n%s%s" % (" ".join(args),
                                                     p.stdout, p.stderr)
    return p.stdout


def test_package_install_start_stop_purge():
    reason = skip_reason() or install_skip_reason()
    if reason:
        skip(reason)
    b = build()
    debs = [b["tgwebhookd"], b["tgwebhookd-dev"]]
    # one package test at a time on a machine
    lock = open("/run/lock/tgwebhookd-package-test.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    reason = install_skip_reason()
    if reason:
        skip(reason)
    before = machine_state(debs)
    emu = runner = None
    try:
        apt("install", "--no-install-recommends", *debs)
        # enabled at install, nothing started before a token is there
        assert os.path.islink("/etc/systemd/system/multi-user.target.wants/"
                              "tgwebhookd.service")
        assert not os.path.lexists(STATE)
        # the unit as installed, with its drop-in, is valid
        if shutil.which("systemd-analyze"):
            p = subprocess.run(["systemd-analyze", "verify", UNIT],
                               capture_output=True, text=True)
            assert p.returncode == 0 and "tgwebhookd" not in p.stderr, \
                "systemd-analyze verify:\n" + p.stderr
        # the shipped configuration passes -t once a token is given
        with tempfile.TemporaryDirectory() as creds:
            with open(os.path.join(creds, "token"), "w") as f:
                f.write(TOKEN + "\n")
            p = subprocess.run(["/usr/sbin/tgwebhookd", "-t", "-c", CONF],
                               capture_output=True, text=True,
                               env={"CREDENTIALS_DIRECTORY": creds})
            assert p.returncode == 0 and "configuration OK" in p.stdout, \
                p.stdout + p.stderr
        # -dev: the example plugin built with the documented command
        pc = subprocess.run(["pkg-config", "--variable=plugindir",
                             "tgwebhookd"], capture_output=True, text=True)
        assert pc.stdout.strip() == PLUGINDIR, pc.stdout + pc.stderr
        with tempfile.TemporaryDirectory() as d:
            so = os.path.join(d, "echo.so")
            subprocess.run("cc -shared -fPIC -O2 $(pkg-config --cflags "
                           "tgwebhookd) -o %s /usr/share/doc/tgwebhookd/"
                           "examples/echo.c" % so, shell=True, check=True)
            assert os.path.getsize(so) > 0

        # a test configuration against the emulator, as an administrator
        # would write it
        port = botapi_emu.free_port()
        admin = botapi_emu.free_port()
        emu = botapi_emu.Emulator(TOKEN, forward=("127.0.0.1", port)).start()
        with open(CONF, "w") as f:
            f.write("[bot]\napi_url = %s\nusername = TestBot\n"
                    "[webhook]\ndomain = localhost\nport = 8443\n"
                    "listen = 127.0.0.1:%d\ntrusted_networks = 127.0.0.0/8\n"
                    "[admin]\nlisten = 127.0.0.1:%d\n"
                    "[handler.start]\ncommands = /start\nreply = Hello!\n"
                    "[handler.roll]\nplugin = %s/dice.so\n"
                    "commands = /roll\n"
                    "[handler.echo]\nupdates = message\n"
                    "exec = /usr/libexec/tgwebhookd/echo-bot\n"
                    % (emu.url, port, admin, PLUGINDIR))
        fd = os.open(TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, (TOKEN + "\n").encode())
        os.close(fd)

        settings = unit_settings([UNIT, DROPIN])
        if os.path.isdir("/run/systemd/system"):
            print("# systemd is PID 1: systemctl starts the unit")
            runner = run_with_systemctl()
        else:
            print("# systemd is not PID 1 here: the unit's ExecStartPre and "
                  "ExecStart run as systemd would run them (credential, "
                  "state directory, dynamic uid, UMask, notify socket); "
                  "the rest of its sandbox is not applied")
            runner = run_as_the_unit(settings)
        _, log = next(runner)
        assert eventually(lambda: emu.webhook, 30), \
            "not registered:\n" + (open(log).read() if log else "")
        status, _, _, body = emu.deliver(message("/start", 1))
        assert status == 200 and b'"Hello!"' in body, (status, body)
        status, _, _, body = emu.deliver(message("/roll", 2))
        assert status == 200 and b'"method"' in body, (status, body)
        status, _, _, body = emu.deliver(message("hi there", 3))
        assert status == 200 and b'"hi there"' in body, (status, body)
        assert emu.wait_calls("sendMessage", 1, timeout=30)   # follow-up
        assert eventually(lambda: "tgwebhookd_telegram_pending_updates " in
                          scrape(admin))
        check_against(scrape(admin))
        for _ in runner:        # stops the service, checks its exit
            pass
        runner = None
    finally:
        if emu is not None:
            emu.stop()
        if runner is not None:
            runner.close()      # stops a daemon a failed check left running
        subprocess.run(["dpkg", "--purge", "tgwebhookd", "tgwebhookd-dev"],
                       capture_output=True)
        for p in _created_private:
            if os.path.isdir(p) and not os.listdir(p):
                os.rmdir(p)
        del _created_private[:]
        lock.close()
    after = machine_state(debs)
    assert after == before, "the machine changed:\nleft: %s\ngone: %s" % (
        sorted(set(after.items()) - set(before.items())),
        sorted(set(before.items()) - set(after.items())))
    st = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "tgwebhookd"],
                        capture_output=True, text=True).stdout
    assert not st or "not-installed" in st, st


def run_with_systemctl():
    """With systemd as PID 1: the real unit, sandbox and all."""
    def ctl(*args):
        return subprocess.run(["systemctl"] + list(args),
                              capture_output=True, text=True)
    ctl("daemon-reload")
    p = ctl("start", "tgwebhookd")
    assert p.returncode == 0, p.stderr + ctl("status", "tgwebhookd").stdout
    try:
        yield None, None
    finally:
        p = ctl("stop", "tgwebhookd")
    assert p.returncode == 0, p.stderr
    assert ctl("show", "-p", "Result", "--value",
               "tgwebhookd").stdout.strip() == "success"
