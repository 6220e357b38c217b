#!/bin/bash
# Runs every test: the cmocka unit binaries (TAP output) and the
# integration tests (Python, against the real binary and the Bot API
# emulator).  Ends with the line "N passed, N failed, N skipped"; a
# skipped test ("ok N - name # SKIP reason" in TAP) is listed with its
# reason and never counted as passed.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
passed=0
failed=0
skipped=0
failures=()
skips=()

count() {	# count TAP lines from a file: $1 = file, $2 = suite name
	local p f s
	p=$(grep '^ok ' "$1" | grep -vc '# SKIP')
	s=$(grep '^ok ' "$1" | grep -c '# SKIP')
	f=$(grep -c '^not ok ' "$1")
	passed=$((passed + p))
	skipped=$((skipped + s))
	failed=$((failed + f))
	while IFS= read -r line; do failures+=("$2: $line"); done \
	    < <(grep '^not ok ' "$1")
	while IFS= read -r line; do skips+=("$2: $line"); done \
	    < <(grep '^ok .*# SKIP' "$1")
}

out=$(mktemp)
# One PostgreSQL server of the run's own for the unit tests' PostgreSQL
# cases (tests/pgserver.py: initdb in a temporary directory, as nobody,
# on a unix socket there), stopped at the end whatever happens.  Under
# make test they always run: a server that does not start is a failure.
pgdir=$(mktemp -d /tmp/tgw-pg-XXXXXX)
trap 'python3 tests/pgserver.py stop "$pgdir"; rm -rf "$out" "$pgdir"' EXIT
if TGW_TEST_PG=$(python3 tests/pgserver.py start "$pgdir" 2> "$out"); then
	export TGW_TEST_PG
else
	cat "$out"
	failed=$((failed + 1))
	failures+=("PostgreSQL: the tests' server did not start (see above)")
fi

for t in "$BUILD"/tests/test_*; do
	[ -x "$t" ] || continue
	name=$(basename "$t")
	CMOCKA_MESSAGE_OUTPUT=TAP "$t" > "$out" 2>&1
	rc=$?
	sed "s/^/[$name] /" "$out"
	count "$out" "$name"
	if [ $rc -ne 0 ] && ! grep -q '^not ok ' "$out"; then
		failed=$((failed + 1))
		failures+=("$name: exited $rc without a test failure (crash?)")
	fi
done

python3 tests/integration/run.py --build "$BUILD" \
    --dir "${TGW_INTEGRATION_DIR:-tests/integration}" > "$out" 2>&1
rc=$?
cat "$out"
count "$out" integration
if [ $rc -ne 0 ] && ! grep -q '^not ok ' "$out"; then
	failed=$((failed + 1))
	failures+=("integration: runner exited $rc")
fi

# A few seconds of each fuzz target (make fuzz runs them longer).
if [ "${FUZZ_SMOKE:-0}" != 0 ] && ls build-fuzz/fuzz_* >/dev/null 2>&1; then
	tests/fuzz/run.sh "$FUZZ_SMOKE" > "$out" 2>&1
	sed 's/^/[fuzz] /' "$out"
	count "$out" fuzz
fi

if [ ${#skips[@]} -gt 0 ]; then
	echo
	echo "Skipped (not run on this machine):"
	printf '  %s\n' "${skips[@]}"
fi
if [ ${#failures[@]} -gt 0 ]; then
	echo
	echo "Failures:"
	printf '  %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
