#!/usr/bin/env bash
# phase.sh NAME CMD... — run CMD as one phase of long work: a start line, a
# heartbeat every $PHASE_HEARTBEAT seconds (default 10) while it runs, and a
# line with its duration (or its exit status), so a terminal is never silent.
# Exits with CMD's status.
set -uo pipefail
name=$1
shift
every=${PHASE_HEARTBEAT:-10}
t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }'; }

printf '==> %s ...\n' "$name"
# CMD keeps this script's stdin (a background job would get /dev/null).
"$@" <&0 &
pid=$!
(
  while sleep "$every"; do
    kill -0 "$pid" 2>/dev/null || exit 0
    printf '    ... %s still running (%s)\n' "$name" "$(elapsed)"
  done
) &
beat=$!
trap 'kill "$pid" "$beat" 2>/dev/null' INT TERM
wait "$pid"
rc=$?
kill "$beat" 2>/dev/null
wait "$beat" 2>/dev/null
if ((rc)); then
  printf '==> %s FAILED (exit %d, %s)\n' "$name" "$rc" "$(elapsed)"
else
  printf '==> %s done (%s)\n' "$name" "$(elapsed)"
fi
exit "$rc"
