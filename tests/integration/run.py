"""Runs every test_* function of tests/integration/test_*.py and prints
TAP lines, which tests/run.sh counts: "ok", "not ok", and for a test that
cannot run here (harness.Skip) "ok N - name # SKIP reason".  Ends with
"# N passed, N failed, N skipped"."""

import argparse
import glob
import importlib.util
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("-k", default="", help="run tests whose name has this")
    ap.add_argument("--dir", default=HERE,
                    help="where the test_*.py are (for the runner's own "
                    "test)")
    args = ap.parse_args()
    os.environ["TGW_BUILD"] = os.path.abspath(args.build)
    sys.path.insert(0, HERE)
    import harness      # after TGW_BUILD: it reads it once
    n = failed = skipped = 0
    for path in sorted(glob.glob(os.path.join(args.dir, "test_*.py"))):
        name = os.path.basename(path)[:-3]
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for fname in sorted(f for f in dir(mod) if f.startswith("test_")):
            full = "%s.%s" % (name, fname)
            if args.k and args.k not in full:
                continue
            n += 1
            t0 = time.time()
            try:
                getattr(mod, fname)()
                print("ok %d - %s (%.1fs)" % (n, full, time.time() - t0),
                      flush=True)
            except harness.Skip as e:
                skipped += 1
                print("ok %d - %s # SKIP %s" % (n, full, e), flush=True)
            except Exception:
                failed += 1
                print("not ok %d - %s" % (n, full), flush=True)
                for line in traceback.format_exc().splitlines():
                    print("# " + line, flush=True)
    print("1..%d" % n)
    print("# %d passed, %d failed, %d skipped" % (n - failed - skipped,
                                                  failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
