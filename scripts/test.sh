#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on real data from ../shared/datasets.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Keep every Ray service on loopback and never join a Ray instance someone else started.
unset RAY_ADDRESS
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
exec .venv/bin/python -m pytest "$@"
