#!/usr/bin/env bash
# `make test`'s steps after the set-up: the checks (lint, typecheck, frontend-test, e2e,
# one after another) run beside pytest instead of before it. pytest spends most of its
# time waiting on containers, servers and workers, so the checks' few minutes fit in
# beside it (a fresh clone here: pytest 15 min 32 s, the whole of make test 17 min 19 s,
# the set-up included; of the checks, Playwright alone took 1.6 min and Vitest 26 s).
#
# pytest keeps the terminal; the checks write to a log that is printed when they end
# (at once if they fail, so a lint error is not hidden for the whole pytest run). The
# exit status is non-zero if either failed.
set -uo pipefail
cd "$(dirname "$0")/.."
make="${MAKE:-make}"

# The set-up once, before the two branches (each target depends on it; run twice at
# the same time, a first set-up would install twice in parallel).
"$make" --no-print-directory setup-test || exit $?

log=$(mktemp /tmp/crucible-checks.XXXXXX.log)
(
  "$make" --no-print-directory lint typecheck frontend-test e2e >"$log" 2>&1
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "── the checks failed (lint, typecheck, frontend-test, e2e); their log: ──"
    cat "$log"
  fi
  exit $rc
) &
checks=$!

"$make" --no-print-directory pytest
pytest_rc=$?

wait "$checks"
checks_rc=$?
if [ $checks_rc -eq 0 ]; then
  echo "── the checks (lint, typecheck, frontend-test, e2e) passed; their log: ──"
  cat "$log"
fi
rm -f "$log"
echo "make test: pytest exit $pytest_rc, checks exit $checks_rc"
[ $pytest_rc -eq 0 ] && [ $checks_rc -eq 0 ]
