"""The suite's own counting: a skipped test is a skip, never a pass, and
says why; run.py and tests/run.sh both end with "N passed, N failed, N
skipped".  Runs both on a made-up suite (one test of each outcome, and a
unit binary printing TAP with a skip)."""

import os
import signal
import subprocess
import sys
import tempfile

from harness import BUILD, HERE, ROOT, skip

FAKE = '''
from harness import skip


def test_a_pass():
    pass


def test_b_fail():
    assert False, "on purpose"


def test_c_skip():
    skip("needs a thing this machine lacks")
'''


def made_up_suite(t):
    it = os.path.join(t, "it")
    os.makedirs(it)
    with open(os.path.join(it, "test_fake.py"), "w") as f:
        f.write(FAKE)
    unit = os.path.join(t, "build", "tests", "test_fake")
    os.makedirs(os.path.dirname(unit))
    with open(unit, "w") as f:
        f.write("#!/bin/sh\necho 'ok 1 - one'\necho 'ok 2 - two # SKIP "
                "no frobnicator'\necho '1..2'\n")
    os.chmod(unit, 0o755)
    return it


def run(argv, env, timeout):
    """argv's result; on a timeout, its whole process group is killed (a
    runner that ignored --dir would be running the real suite)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def test_skips_counted_as_skips_with_their_reason():
    if os.environ.get("TGW_SUITE_COUNTS_NESTED"):
        skip("the runner ignored --dir and ran the real suite again")
    with tempfile.TemporaryDirectory(prefix="tgw-counts-") as t:
        it = made_up_suite(t)
        env = dict(os.environ, BUILD=os.path.join(t, "build"),
                   TGW_INTEGRATION_DIR=it, FUZZ_SMOKE="0",
                   TGW_SUITE_COUNTS_NESTED="1")
        out = run([sys.executable, os.path.join(HERE, "run.py"), "--build",
                   BUILD, "--dir", it], env, 60)
        lines = out.stdout.splitlines()
        assert out.returncode == 1, out
        assert lines[0].startswith("ok 1 - test_fake.test_a_pass"), lines
        assert lines[1] == "not ok 2 - test_fake.test_b_fail", lines
        assert "ok 3 - test_fake.test_c_skip # SKIP needs a thing this " \
            "machine lacks" in lines, lines
        assert lines[-1] == "# 1 passed, 1 failed, 1 skipped", lines

        out = run([os.path.join(ROOT, "tests", "run.sh")], env, 60)
        lines = out.stdout.splitlines()
        assert out.returncode == 1, out
        assert lines[-1] == "2 passed, 1 failed, 2 skipped", lines
        assert "  test_fake: ok 2 - two # SKIP no frobnicator" in lines, lines
        assert "  integration: ok 3 - test_fake.test_c_skip # SKIP needs a " \
            "thing this machine lacks" in lines, lines
