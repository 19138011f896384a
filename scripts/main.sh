#!/usr/bin/env bash
# The main job: set up (if needed), convert CIFAR-10 to FFCV files, show the two views Barlow
# Twins trains on, and pretrain the small CPU recipe on a local Ray instance.
# (It becomes the demo sweep once `harness sweep` exists.)
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
.venv/bin/harness pretrain experiments/cifar10_cpu.yaml
