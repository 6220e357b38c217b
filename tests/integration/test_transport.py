"""The transport against hostile or careless clients: TLS 1.2's suites,
X-Forwarded-For over several lines, strict HTTP framing (no request
smuggling), limits for connections nobody vouches for, and an inline
answer whose connection dropped."""

import subprocess

from harness import Daemon

HANDLERS = "[handler.start]\ncommands = /start\nreply = hi\n"


def s_client(port, *args):
    """(handshake succeeded, openssl's report) for openssl s_client with
    args, sending nothing."""
    p = subprocess.run(["openssl", "s_client", "-connect",
                        "127.0.0.1:%d" % port, "-servername", "localhost"] +
                       list(args), input=b"", capture_output=True,
                       timeout=20)
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    ok = p.returncode == 0 and "Cipher is (NONE)" not in out and \
        "New, TLSv1" in out
    return ok, out


def test_tls_1_2_is_ecdhe_with_aead_only():
    with Daemon(HANDLERS) as d:
        # static RSA key exchange (no forward secrecy), CBC with SHA-1,
        # and ECDHE with CBC: refused
        for cipher in ("AES128-SHA", "AES256-GCM-SHA384",
                       "AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA",
                       "ECDHE-RSA-AES256-SHA384", "DHE-RSA-AES128-GCM-SHA256"):
            ok, out = s_client(d.port, "-tls1_2", "-cipher", cipher)
            assert not ok, "%s accepted:\n%s" % (cipher, out)
        for cipher in ("ECDHE-RSA-AES128-GCM-SHA256",
                       "ECDHE-RSA-AES256-GCM-SHA384",
                       "ECDHE-RSA-CHACHA20-POLY1305"):
            ok, out = s_client(d.port, "-tls1_2", "-cipher", cipher)
            assert ok, "%s refused:\n%s" % (cipher, out)
            assert "Cipher is " + cipher in out, out
        ok, out = s_client(d.port, "-tls1_3")
        assert ok and "New, TLSv1.3" in out, out
