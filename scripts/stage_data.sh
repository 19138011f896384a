#!/usr/bin/env bash
# Copy every prepared data set (a folder with manifest.json) from SOURCE to DEST on this node.
#   bash scripts/stage_data.sh /mnt/results/data runs/main/data
# FFCV memory-maps its .beton files, so each node reads a local copy, not the shared storage.
# Run by cluster.yaml's setup commands on every node; a data set whose manifest.json is
# unchanged is not copied again.
# manifest.json goes last: a folder without it is not a prepared data set (data_prep).
set -euo pipefail
[ $# = 2 ] || { echo "usage: $0 SOURCE DEST" >&2; exit 2; }
src=$1 dest=$2
if [ ! -d "$src" ]; then
    echo "stage_data: no data sets at $src yet (upload them there, then run ray up again)"
    exit 0
fi
shopt -s nullglob
for manifest in "$src"/*/manifest.json; do
    name=$(basename "$(dirname "$manifest")")
    if cmp -s "$manifest" "$dest/$name/manifest.json"; then
        echo "stage_data: $name is up to date in $dest/$name"
        continue
    fi
    mkdir -p "$dest/$name"
    rm -f "$dest/$name/manifest.json"
    rsync -a --exclude manifest.json "$src/$name/" "$dest/$name/"
    cp "$manifest" "$dest/$name/manifest.json"
    echo "stage_data: $name -> $dest/$name ($(du -sh "$dest/$name" | cut -f1))"
done
