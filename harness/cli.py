"""`harness` command line: one subcommand per job.

prep, stage, cluster init, views, pretrain, export, eval, sweep, report.
"""

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _prep(args: argparse.Namespace) -> int:
    from data_prep import prepare

    manifest = prepare(args.source, Path(args.out), max_resolution=args.max_resolution,
                       write_mode=args.write_mode, jpeg_quality=args.jpeg_quality,
                       num_workers=args.workers, strict=args.strict, split_from=args.split_from,
                       test_fraction=args.test_fraction, seed=args.seed, force=args.force,
                       val_fraction=args.val_fraction, val_max_per_class=args.val_max_per_class,
                       subset_lists=_subset_lists(args.subset_list),
                       download_root=Path(args.download_root) if args.download_root else None)
    for split, info in manifest["splits"].items():
        print(f"{split:>6}: {info['count']:>8} images -> {Path(args.out) / info['file']}")
    val = manifest["validation"]
    if val:
        where = (f"carved from train -> {Path(args.out) / val['file']}" if val["split"] == "train"
                 else f"the source's own {val['split']} split")
        print(f"   val: {val['count']:>8} images ({where}; selection reads these, test is "
              "reported only)")
    for name, entry in manifest["subsets"].items():
        origin = entry.get("imported_from") or f"seeded, {entry['fraction']:.0%} per class"
        print(f"{name:>6}: {entry['count']:>8} images ({origin})")
    norm = manifest["normalization"]
    print(f"normalisation: mean {_three(norm['mean'])}, std {_three(norm['std'])} "
          f"(of {norm['of']}, {norm['images']} images)")
    skipped = manifest.get("skipped", [])
    if skipped:
        print(f"skipped {len(skipped)} unreadable images (listed in manifest.json)")
    print(f"classes: {len(manifest['classes'])}; manifest: {Path(args.out) / 'manifest.json'}")
    return 0


def _subset_lists(pairs: list[str] | None) -> dict[str, str]:
    """--subset-list NAME=FILE, repeated, as {NAME: FILE}; prepare checks the names and files."""
    lists = {}
    for pair in pairs or []:
        name, sep, file = pair.partition("=")
        if not sep or not name or not file:
            raise ValueError(f"--subset-list {pair!r}: write NAME=FILE, e.g. "
                             "--subset-list 1pct=imagenet_1percent.txt")
        if name in lists:
            raise ValueError(f"--subset-list names {name} twice: give each subset one file")
        lists[name] = file
    return lists


def _three(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def _views(args: argparse.Namespace) -> int:
    from harness.data import preset_views, save_view_grid

    data_dir = Path(args.data_dir)
    resolution = args.resolution or _stored_resolution(data_dir, args.split)
    preset = args.preset or ("cifar" if resolution <= 64 else "imagenet")
    out = Path(args.out) if args.out else data_dir / f"views_{args.split}.png"
    save_view_grid(data_dir, out, resolution=resolution, views=preset_views(preset),
                   count=args.count, split=args.split, seed=args.seed)
    print(f"wrote {out} ({args.count} images: original | view A | view B, "
          f"{resolution} px, '{preset}' augmentations)")
    return 0


def _stored_resolution(data_dir: Path, split: str) -> int:
    """Train at the stored size, capped at ImageNet's 224."""
    from data_prep import read_manifest

    splits = read_manifest(data_dir)["splits"]
    if split not in splits:
        raise ValueError(f"{data_dir} has no '{split}' split; it has: {', '.join(sorted(splits))}")
    size = splits[split]["image_size"]
    return int(min(224, size["max_height"], size["max_width"]))


def build_parser() -> argparse.ArgumentParser:
    from data_prep import defaults as prep_defaults  # no imports of its own

    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prep", help="convert an image folder, archive or data set to FFCV files")
    p.add_argument("source", nargs="+",
                   help="image folder <split>/<class>/<img>, .tar/.tar.gz of one, or cifar10 | "
                        "cifar100 | stl10 (downloads when online); several sources holding "
                        "different splits are merged")
    p.add_argument("--out", required=True, help="output folder for <split>.beton and manifest.json")
    p.add_argument("--max-resolution", type=int, default=None,
                   help="downscale images whose longer side exceeds this")
    p.add_argument("--write-mode", choices=prep_defaults.WRITE_MODES,
                   default=prep_defaults.WRITE_MODE)
    p.add_argument("--jpeg-quality", type=int, default=prep_defaults.JPEG_QUALITY)
    p.add_argument("--workers", type=int, default=None,
                   help="processes (default: every CPU this process may use)")
    p.add_argument("--strict", action="store_true", help="fail on a corrupt image instead of skipping")
    p.add_argument("--split-from", default=None,
                   help="make train/test from this one labelled split (seeded, stratified)")
    p.add_argument("--test-fraction", type=float, default=prep_defaults.TEST_FRACTION)
    p.add_argument("--val-fraction", type=float, default=prep_defaults.VAL_FRACTION,
                   help="share of each class of train held out as the validation list")
    p.add_argument("--val-max-per-class", type=int,
                   default=prep_defaults.VAL_MAX_PER_CLASS,
                   help="at most this many validation images per class")
    p.add_argument("--seed", type=int, default=prep_defaults.SEED,
                   help="seed of label subsets and splits")
    p.add_argument("--subset-list", action="append", metavar="NAME=FILE",
                   help="import a published label subset (e.g. SimCLR's ImageNet 1%%: "
                        "1pct=1percent.txt): FILE names train images one per line, as a bare "
                        "file name, <class>/<file> or train/<class>/<file>; it replaces the "
                        "seeded subset NAME (or adds one) and val.txt is carved outside it; "
                        "repeatable")
    p.add_argument("--download-root", default=None, help="where torchvision data sets are cached")
    p.add_argument("--force", action="store_true", help="rewrite even if up to date")
    p.set_defaults(func=_prep)

    p = sub.add_parser("stage", help="copy prepared data sets from a bucket (s3://...) or a "
                                     "shared folder to this node's disk")
    p.add_argument("source", help="a prepared data set, or a folder of them: a path or a URI "
                                  "pyarrow.fs opens (s3://bucket/prefix, gs://, file://)")
    p.add_argument("--to", required=True, metavar="DIR",
                   help="local folder; each data set goes to DIR/<name>")
    p.add_argument("--only", nargs="+", metavar="NAME", default=None,
                   help="stage only these data sets (folder names at SOURCE)")
    p.set_defaults(func=_stage)

    p = sub.add_parser("cluster", help="cluster files for `ray up`")
    cluster = p.add_subparsers(dest="cluster_command", required=True, metavar="init")
    p = cluster.add_parser("init", help="write a ready cluster file: cluster.yaml with your "
                                        "bucket, region and the region's pinned GPU AMI")
    p.add_argument("--bucket", required=True, help="an S3 bucket of yours, in that region")
    p.add_argument("--region", required=True, help="AWS region, e.g. us-west-2")
    p.add_argument("--out", default=None, help="file to write (default cluster.REGION.yaml)")
    p.set_defaults(func=_cluster)

    p = sub.add_parser("views", help="write a PNG grid of (original, view A, view B)")
    p.add_argument("data_dir", help="a folder written by `harness prep`")
    p.add_argument("--out", default=None, help="PNG path (default DATA_DIR/views_<split>.png)")
    p.add_argument("--split", default="train")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--resolution", type=int, default=None, help="default: the stored size, <= 224")
    p.add_argument("--preset", choices=("cifar", "imagenet"), default=None,
                   help="augmentation recipe (default: cifar up to 64 px, else imagenet)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_views)

    p = sub.add_parser("pretrain", help="Barlow Twins pretraining on Ray Train (resumes by name)")
    p.add_argument("config", help="a YAML file, e.g. experiments/cifar10_cpu.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, dotted (optimizer.lr_weights=0.2); repeatable")
    p.add_argument("--name", default=None, help="run name (default: the config file's stem)")
    p.add_argument("--storage", default=None, help="where runs are stored (run.storage_path): "
                   "a folder, or a URI such as s3://bucket/prefix")
    p.add_argument("--address", default=None,
                   help="join this Ray cluster (default: start a local instance on 127.0.0.1)")
    p.add_argument("--eval", nargs="+", default=None, metavar="P",
                   help="then evaluate the last checkpoint on the run's workers: linear, knn, "
                        "semi, transfer (records in RUN_DIR/eval, random-init baseline included)")
    p.add_argument("--eval-transfer", nargs="+", default=[], metavar="DIR",
                   help="data sets for --eval transfer")
    p.add_argument("--eval-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an evaluation setting (see `harness eval`), e.g. test_images=1000")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("export", help="write backbone.pt / projector.pt from a checkpoint")
    p.add_argument("checkpoint", help="a checkpoint folder, its state.pt, or a run folder (newest)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_export)

    p = sub.add_parser("eval", help="evaluate a checkpoint: linear, knn, semi, transfer")
    p.add_argument("checkpoint", help="a checkpoint folder, its state.pt, a run folder (newest "
                                      "checkpoint) or an export folder")
    p.add_argument("--protocol", nargs="+", required=True, metavar="P",
                   help="one or more of: linear, knn, semi, transfer")
    p.add_argument("--data", default=None, help="a `harness prep` folder (linear, knn, semi)")
    p.add_argument("--transfer", nargs="+", default=[], metavar="DIR",
                   help="other `harness prep` folders for the transfer protocol")
    p.add_argument("--config", default=None,
                   help="a YAML file of evaluation settings (the keys of EvalSettings)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="an evaluation setting, e.g. linear_mode=paper, test_images=1000")
    p.add_argument("--resolution", type=int, default=None,
                   help="evaluate at this many pixels (default: the training resolution)")
    p.add_argument("--arch", default=None, help="fail unless the checkpoint holds this backbone")
    p.add_argument("--out", default=None, help="folder of the JSON records")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the randomly initialised reference backbone")
    p.set_defaults(func=_eval)

    p = sub.add_parser("sweep", help="a Ray Tune sweep of pretraining configs, each trial "
                                     "evaluated")
    p.add_argument("config", nargs="+",
                   help="a sweep file, e.g. experiments/sweep_cifar10_demo.yaml; several run one "
                        "after another on one Ray instance (experiments/ablations/*.yaml: the "
                        "paper's ablations)")
    p.add_argument("--verbose", action="store_true",
                   help="also show the workers' output and Ray's own messages (by default "
                        "they go to RUN_DIR/logs; the console shows one line per trial event)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep in its folder (running the command again does too); "
                        "fails if there is none")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set a pretraining config key on every trial, e.g. epochs=2; repeatable")
    p.add_argument("--eval-set", action="append", metavar="KEY=VALUE",
                   help="set an evaluation setting over the file's evaluate.settings, e.g. "
                        "linear_mode=fast; repeatable")
    p.add_argument("--trials", nargs="+", metavar="ID", default=None,
                   help="run only these trials of each file (e.g. t0000 for a smoke run); the "
                        "others stay to run later")
    p.add_argument("--name", default=None, help="sweep name (default: the file's `name`)")
    p.add_argument("--storage", default=None, help="folder of sweeps (default: the file's "
                                                   "storage_path, else runs/sweeps)")
    p.add_argument("--address", default=None,
                   help="join this Ray cluster (default: start a local instance on 127.0.0.1)")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("report", help="a sweep's results table, ablation figures and TensorBoard")
    p.add_argument("run_dir", help="a sweep folder (<storage_path>/<name>), finished or running")
    p.add_argument("--metric", default=None,
                   help="val column that picks the best row, e.g. linear/val/top1 (default: the "
                        "sweep's metric, else the first evaluation's primary on val; test "
                        "columns are reported only)")
    p.add_argument("--out", default=None, help="report folder (default RUN_DIR/report; rewritten)")
    p.set_defaults(func=_report)
    return parser


def _stage(args: argparse.Namespace) -> int:
    from data_prep.stage import stage

    for r in stage(args.source, args.to, only=args.only):
        state = "staged" if r.copied else "up to date"
        print(f"harness stage: {r.name} {state} in {r.path} ({r.bytes / 1e6:.1f} MB)")
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from harness.cluster_init import cluster_command
    return cluster_command(args)


def _pretrain(args: argparse.Namespace) -> int:
    # Imported here: Ray and torch take seconds to import, which prep and views do not need.
    from harness.pretrain.command import pretrain_command
    return pretrain_command(args)


def _export(args: argparse.Namespace) -> int:
    from harness.checkpoint import export_command
    return export_command(args)


def _eval(args: argparse.Namespace) -> int:
    from harness.evaluation.command import eval_command
    return eval_command(args)


def _sweep(args: argparse.Namespace) -> int:
    from harness.sweep.run import sweep_command
    return sweep_command(args)


def _report(args: argparse.Namespace) -> int:
    from harness.results.report import report_command
    return report_command(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        # Bad input (PrepError, ConfigError are ValueErrors): the message says what to do.
        print(f"harness {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        # Ray that would not start: no bad input, the machine is too busy (harness.ray_runtime
        # is imported only by the commands that start Ray).
        runtime = sys.modules.get("harness.ray_runtime")
        if runtime is None or not isinstance(err, runtime.RayStartError):
            raise
        print(f"harness {args.command}: error: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
