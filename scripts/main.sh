#!/usr/bin/env bash
# The main job: set up (if needed), convert CIFAR-10 to FFCV files, show the two views Barlow
# Twins trains on, then a small Ray Tune sweep (lambda x projector width, 4 trials of the CPU
# demo recipe) on a local Ray instance, each trial evaluated by the linear probe and kNN against
# a random-init backbone. Ends with the results table and where to point TensorBoard.
# Running it again resumes the sweep; extra arguments go to `harness sweep` (e.g. --set
# workers.use_gpu=true on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
unset RAY_ADDRESS
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
DATASETS=${BT_DATASETS:-../shared/datasets}
DATA=runs/main/data/cifar10   # where experiments/cifar10*.yaml read it
.venv/bin/harness prep "$DATASETS/cifar10/train.tar.gz" "$DATASETS/cifar10/test.tar.gz" \
    --out "$DATA" --write-mode raw
.venv/bin/harness views "$DATA" --out runs/main/views_cifar10.png --count 8
.venv/bin/harness sweep experiments/sweep_cifar10_demo.yaml "$@"
