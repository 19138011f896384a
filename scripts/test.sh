#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on real data from ../shared/datasets.
#   bash scripts/test.sh                 # the whole suite (what .ci/run runs)
#   bash scripts/test.sh tests/test_x.py # any pytest arguments: one pytest run with them
#
# The whole suite runs as three pytest processes side by side. The slow tests (marker `slow`:
# they start Ray or compile FFCV pipelines) are two runs: the cluster and pretraining tests,
# and the rest. Much of a slow test's time is spent waiting on Ray's processes to start, to
# report and to notice a lost node, and much of the rest on one core (a process's imports), so
# two of them side by side keep both cores busy where one leaves one idle. The fast ones (pure
# computation, no Ray) run beside them at the lowest CPU priority (nice 19), so they take only
# the CPU the slow ones leave idle and never delay a Ray start-up. Every test runs exactly once
# (a new slow test outside the first run's folders lands in the second); the suite fails if
# any run fails or collects nothing. Under a CPU quota below the machine's cores they run as
# one pytest instead (below).
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

# The slow tests' first run: these folders; the second: everything else that is slow.
SLOW_FIRST=(tests/cluster tests/pretrain tests/test_ray_runtime.py)
log_dir=$(mktemp -d "${TMPDIR:-/tmp}/barlow-tests.XXXXXX")
nice -n 19 "${PYTEST[@]}" -m "not slow" -p no:cacheprovider >"$log_dir/fast" 2>&1 &
fast_pid=$!
"${PYTEST[@]}" -m slow -p no:cacheprovider "${SLOW_FIRST[@]}" >"$log_dir/slow-first" 2>&1 &
first_pid=$!
# An interrupted or failed run takes the background ones with it.
trap 'kill "$fast_pid" "$first_pid" 2>/dev/null || true; rm -rf "$log_dir"' EXIT

echo "test.sh: the slow tests of ${SLOW_FIRST[*]} and the fast tests (-m 'not slow', at"
echo "nice 19) run beside these; their reports follow"
rest_rc=0
"${PYTEST[@]}" -m slow "${SLOW_FIRST[@]/#/--ignore=}" || rest_rc=$?
first_rc=0
wait "$first_pid" || first_rc=$?
fast_rc=0
wait "$fast_pid" || fast_rc=$?
echo
echo "test.sh: the slow tests of ${SLOW_FIRST[*]}:"
cat "$log_dir/slow-first"
echo
echo "test.sh: the fast tests (-m 'not slow'):"
cat "$log_dir/fast"
echo
echo "test.sh: exit codes: slow tests $rest_rc (the rest) and $first_rc (${SLOW_FIRST[*]}),"
echo "fast tests $fast_rc (0: passed; 5: none collected)"
[ "$rest_rc" = 0 ] && [ "$first_rc" = 0 ] && [ "$fast_rc" = 0 ]
