#!/usr/bin/env bash
# Runs the whole test suite (the README's `cargo test --workspace`) N times in a row while a
# CPU hog keeps one core busy, and reports how many runs failed and which tests failed.
#
#   scripts/stress-tests.sh [N] [extra cargo test args, e.g. --release]
#
# Every run's output is kept in target/stress/run-K.log. Exit status 0 only if every run passed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
shift || true
out=target/stress
rm -rf "$out"
mkdir -p "$out"

echo "== building the tests once"
cargo test --workspace --no-run "$@" >"$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }

# The hog: one busy loop, pinned to the last CPU when taskset is there (the other core is left
# to the tests, the load a busy CI neighbour puts on a 2-core machine).
last_cpu=$(( $(nproc) - 1 ))
if command -v taskset >/dev/null; then
  taskset -c "$last_cpu" bash -c 'while :; do :; done' &
else
  bash -c 'while :; do :; done' &
fi
hog=$!
trap 'kill "$hog" 2>/dev/null || true' EXIT
echo "== CPU hog running (pid $hog); $runs runs of cargo test --workspace $*"

failed_runs=0
: >"$out/failures.txt"
for k in $(seq 1 "$runs"); do
  start=$(date +%s)
  if cargo test --workspace "$@" >"$out/run-$k.log" 2>&1; then
    verdict=pass
  else
    verdict=FAIL
    failed_runs=$((failed_runs + 1))
    # "test name ... FAILED" lines; a test binary that crashed shows as its error line.
    grep -E '^test .* FAILED$' "$out/run-$k.log" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/' \
      | sed "s/^/run $k: /" >>"$out/failures.txt" || true
    grep -qE '^test .* FAILED$' "$out/run-$k.log" \
      || echo "run $k: (no failing test named; see $out/run-$k.log)" >>"$out/failures.txt"
  fi
  echo "run $k/$runs: $verdict in $(( $(date +%s) - start )) s"
done

echo "== $((runs - failed_runs)) of $runs runs passed"
if [ "$failed_runs" -gt 0 ]; then
  echo "failing tests (count):"
  sed -E 's/^run [0-9]+: //' "$out/failures.txt" | sort | uniq -c | sort -rn
  exit 1
fi
