#!/usr/bin/env bash
# The main job: set up (if needed), convert CIFAR-10 to FFCV files, and show the two views
# Barlow Twins trains on. (It becomes the demo sweep once `harness sweep` exists.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
unset RAY_ADDRESS
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
DATASETS=${BT_DATASETS:-../shared/datasets}
OUT=${BT_OUT:-runs/main}
.venv/bin/harness prep "$DATASETS/cifar10/train.tar.gz" "$DATASETS/cifar10/test.tar.gz" \
    --out "$OUT/data/cifar10" --write-mode raw
.venv/bin/harness views "$OUT/data/cifar10" --out "$OUT/views_cifar10.png" --count 8
