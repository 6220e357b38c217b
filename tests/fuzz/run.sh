#!/bin/bash
# Runs every libFuzzer target for $1 seconds each (default 60) from its
# seed corpus, and prints a TAP line per target with the executions and
# coverage reached.  A crash leaves its input in build-fuzz/crashes/ and
# makes the line "not ok"; turn it into a regression seed under
# tests/fuzz/seeds/<target>/ once fixed.
set -u
cd "$(dirname "$0")/../.."
secs=${1:-60}
dir=build-fuzz
n=0
rc=0
mkdir -p "$dir/crashes"
for bin in "$dir"/fuzz_*; do
	[ -x "$bin" ] || continue
	name=${bin##*/fuzz_}
	n=$((n + 1))
	corpus="$dir/corpus/$name"
	mkdir -p "$corpus"
	case $name in
	update) seeds=tests/corpus/updates ;;
	config) seeds=conf ;;
	*) seeds=tests/fuzz/seeds/$name ;;
	esac
	log="$dir/$name.log"
	"$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 \
	    -artifact_prefix="$dir/crashes/$name-" "$corpus" "$seeds" \
	    > "$log" 2>&1
	status=$?
	stats=$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE|INITED)' "$log" |
	    tail -1 | sed -E 's/^#([0-9]+)[[:space:]]+[A-Z]+[[:space:]]+cov: ([0-9]+) ft: ([0-9]+).*/\1 execs, cov \2, ft \3/')
	if [ $status -eq 0 ]; then
		echo "ok $n - fuzz_$name: $stats in ${secs}s"
	else
		echo "not ok $n - fuzz_$name: exit $status, see $log"
		grep -E 'ERROR|SUMMARY|runtime error' "$log" | head -5 | sed 's/^/# /'
		rc=1
	fi
done
exit $rc
