"""Linear evaluation benchmark: the fast cached-feature probe against the paper's protocol.

Both modes evaluate the same checkpoint on the same training and test images (a seeded,
class-balanced sample when --train-images / --test-images are given), side by side in one run:
  - fast: centre-crop features extracted once, L2-regularised logistic regression by L-BFGS
    (the penalty chosen by top-1 on the validation list; test top-1 reported);
  - paper: the authors' evaluate.py: frozen backbone, a linear head trained with SGD (lr 0.3,
    momentum 0.9, weight decay 1e-6, cosine) on random-resized crops + flips for --paper-epochs
    epochs (the paper: 100), the backbone run on every augmented batch.
Wall time includes feature extraction and FFCV's pipeline compilation for each mode. A
random-init backbone is measured too, as the floor both should clear.

    .venv/bin/python benchmarks/linear_probe.py CHECKPOINT --data runs/main/data/cifar10 \\
        [--train-images 2000] [--test-images 1000] [--paper-epochs 20]
"""

import argparse
import json
import platform
import time

import torch

from harness.evaluation import EvalSettings, evaluate, load_backbone, random_backbone
from harness.provenance import hardware, library_versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--paper-epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pretrained = load_backbone(args.checkpoint)
    rows = []
    for backbone in (pretrained, random_backbone(pretrained, seed=0)):
        for mode in ("fast", "paper"):
            settings = EvalSettings(linear_mode=mode, linear_epochs=args.paper_epochs,
                                    train_images=args.train_images,
                                    test_images=args.test_images, loader_workers=args.threads)
            start = time.perf_counter()
            (record,) = evaluate(backbone, ["linear"], args.data, settings=settings)
            rows.append({"init": backbone.init, "mode": mode,
                         "top1": record["metrics"]["test/top1"],
                         "top5": record["metrics"]["test/top5"],
                         "wall_s": time.perf_counter() - start,
                         "train_images": record["data"]["train_images"],
                         "test_images": record["data"]["test_images"],
                         "detail": {k: record["settings"].get(k) for k in
                                    ("l2", "epochs", "steps", "batch_size") if k in record["settings"]}})
            print(f"  {rows[-1]['init']:>10} {mode:<5} top-1 {100 * rows[-1]['top1']:.1f} "
                  f"({rows[-1]['wall_s']:.0f} s)", flush=True)

    print(f"\ncheckpoint {args.checkpoint} (epoch {pretrained.epoch}), data {args.data}: "
          f"{rows[0]['train_images']} train / {rows[0]['test_images']} test images, "
          f"paper mode {args.paper_epochs} epochs")
    print(f"machine: {platform.processor() or platform.machine()}, {hardware()['cpus']} CPUs, "
          f"threads {args.threads}; versions: {library_versions()}\n")
    print("| backbone | mode | top-1 | top-5 | wall s | time vs paper |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        paper = next(r for r in rows if r["init"] == row["init"] and r["mode"] == "paper")
        print(f"| {row['init']} | {row['mode']} | {100 * row['top1']:.1f} | "
              f"{100 * row['top5']:.1f} | {row['wall_s']:.1f} | "
              f"{row['wall_s'] / paper['wall_s']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
