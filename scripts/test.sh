#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on real data from ../shared/datasets.
#   bash scripts/test.sh                 # the whole suite (what .ci/run runs)
#   bash scripts/test.sh tests/test_x.py # any pytest arguments: one pytest run with them
#
# The whole suite runs as two pytest processes side by side. The slow tests (marker `slow`:
# they start Ray or compile FFCV pipelines) spend part of their time waiting on Ray's processes
# to start and to report; the fast ones (pure computation, no Ray) run beside them at the lowest
# CPU priority (nice 19), so they take only the CPU the slow ones leave idle and never delay a
# Ray start-up. Every test runs; the suite fails if either run fails or collects nothing. Under
# a CPU quota below the machine's cores they run as one pytest instead (below).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Keep every Ray service on loopback and never join a Ray instance someone else started.
unset RAY_ADDRESS
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
PYTEST=(.venv/bin/python -m pytest)
if [ $# -gt 0 ]; then
    exec "${PYTEST[@]}" "$@"
fi

# Under a CPU quota (a container's limit, ../shared/tools/throttled) an idle core is no idle
# CPU: the quota is one allowance for all cores, and a nice 19 process on a free core spends it
# as fast as any other. There the fast tests would take the slow ones' CPU, so they run after.
quota=$(.venv/bin/python -c "from harness.provenance import cpu_quota, usable_cpus
q = cpu_quota(); print('' if q is None or q >= usable_cpus() else q)")
if [ -n "$quota" ]; then
    echo "test.sh: a CPU quota of $quota cores: one pytest run, the fast tests with the slow ones"
    exec "${PYTEST[@]}"
fi

fast_log=$(mktemp "${TMPDIR:-/tmp}/barlow-fast-tests.XXXXXX")
nice -n 19 "${PYTEST[@]}" -m "not slow" -p no:cacheprovider >"$fast_log" 2>&1 &
fast_pid=$!
# An interrupted or failed run takes the background one with it.
trap 'kill "$fast_pid" 2>/dev/null || true; rm -f "$fast_log"' EXIT

echo "test.sh: the fast tests (-m 'not slow') run beside these at nice 19; their report follows"
slow_rc=0
"${PYTEST[@]}" -m slow || slow_rc=$?
fast_rc=0
wait "$fast_pid" || fast_rc=$?
echo
echo "test.sh: the fast tests (-m 'not slow'):"
cat "$fast_log"
echo
echo "test.sh: slow tests exit code $slow_rc, fast tests exit code $fast_rc (0: passed; 5: none collected)"
[ "$slow_rc" = 0 ] && [ "$fast_rc" = 0 ]
