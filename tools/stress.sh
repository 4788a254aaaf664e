#!/usr/bin/env bash
# The suite, green every time: `make test` RUNS times in a row in one fresh clone of HEAD while a
# second fresh clone runs `make test` in a loop at the same time on the same cores. Prints one line
# per run and exits non-zero when any run failed. Usage: tools/stress.sh [RUNS] (default 3).
set -uo pipefail
runs=${1:-3}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/tradebot-stress-XXXXXX")
trap 'touch "$work/done"; wait; rm -rf "$work"' EXIT
for side in a b; do
  git clone -q "$repo" "$work/$side"
  make -C "$work/$side" .venv/.installed > "$work/$side-setup.log" 2>&1 || { cat "$work/$side-setup.log"; exit 1; }
done
failed=0
(
  i=0
  while [ ! -f "$work/done" ]; do
    i=$((i + 1))
    make --no-print-directory -C "$work/b" test > "$work/b-$i.log" 2>&1
    echo "background run $i: rc=$? $(grep -E " (passed|failed|error)" "$work/b-$i.log" | tail -1)"
  done
) &
sleep 20  # the background suite is under way first
for i in $(seq "$runs"); do
  start=$(date +%s)
  make --no-print-directory -C "$work/a" test > "$work/a-$i.log" 2>&1
  rc=$?
  [ $rc -eq 0 ] || { failed=1; grep -E "^(FAILED|ERROR)" "$work/a-$i.log"; }
  echo "run $i: rc=$rc in $(( $(date +%s) - start ))s $(grep -E " (passed|failed|error)" "$work/a-$i.log" | tail -1)"
done
touch "$work/done"
wait
grep -l -E "^(FAILED|ERROR)" "$work"/b-*.log > /dev/null 2>&1 && { failed=1; grep -h -E "^(FAILED|ERROR)" "$work"/b-*.log; }
exit $failed
