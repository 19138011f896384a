"""Shared fixtures: small real image-folder subsets cut from ../shared/datasets."""

import os
import tarfile
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from processes import SESSION_VAR, kill_tree, ray_processes, wait_for_no_ray

REPO = Path(__file__).resolve().parents[1]
# Marks every process this test session starts (processes.ray_processes).
os.environ.setdefault(SESSION_VAR, uuid.uuid4().hex)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Keep a fault handler through the interpreter's shutdown, after pytest has removed its
    own: a crash there (a native thread pool, numba's TBB layer or Ray's core worker, torn down
    under a live thread) then prints every thread's stack instead of a bare exit code 139
    (seen once, after all 66 slow tests had passed). Lingering threads are named first."""
    import faulthandler
    import sys
    import threading

    alive = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if alive:
        print(f"\nconftest: threads alive at exit: {', '.join(alive)}", file=sys.__stderr__)
    faulthandler.enable(file=sys.__stderr__, all_threads=True)


def datasets_root() -> Path:
    """The shared real data sets: $BT_DATASETS, else ../shared/datasets beside the checkout."""
    root = Path(os.environ.get("BT_DATASETS", REPO.parent / "shared" / "datasets"))
    if not root.is_dir():
        pytest.fail(f"real data sets not found at {root}: set BT_DATASETS to the folder "
                    "holding cifar10/, imagenette/ and tiny-imagenet-val/")
    return root


def extract_subset(archive: Path, dest: Path, per_class: int,
                   max_classes: int | None = None) -> Path:
    """Copy the first `per_class` images of every <split>/<class>/ in a .tar.gz into `dest`.

    Streams the archive once and stops reading a class as soon as it is full, so a few hundred
    images cost a couple of seconds, not a full unpack. With `max_classes`, only the first that
    many classes of each split (in archive order) are kept.
    """
    taken = defaultdict(int)
    classes = defaultdict(set)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            parts = Path(member.name).parts
            if len(parts) < 3:
                continue
            split, cls = parts[-3], parts[-2]
            if max_classes is not None and cls not in classes[split]:
                if len(classes[split]) >= max_classes:
                    continue
                classes[split].add(cls)
            if taken[split, cls] >= per_class:
                continue
            taken[split, cls] += 1
            target = dest / split / cls / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    return dest


@pytest.fixture(scope="module", autouse=True)
def no_ray_left_behind():
    """After each test module (its Ray fixtures torn down first), none of the Ray processes
    it started may remain: the next module must start on an idle machine. Leftovers are
    killed, and the module's teardown fails naming them."""
    before = ray_processes()
    yield
    left = wait_for_no_ray(before)
    for pid in left:
        kill_tree(pid)
    assert not left, f"Ray processes outlived their test module: {sorted(left.values())}"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    return datasets_root()


def cifar_image_folder(root: Path, dest: Path, train: int, test: int) -> Path:
    """A real CIFAR-10 image folder in `dest`: `train` and `test` images per class."""
    extract_subset(root / "cifar10" / "train.tar.gz", dest, per_class=train)
    extract_subset(root / "cifar10" / "test.tar.gz", dest, per_class=test)
    return dest


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory, shared_datasets) -> Path:
    """CIFAR-10 image folder: 40 train and 10 test images per class (real JPEGs)."""
    return cifar_image_folder(shared_datasets, tmp_path_factory.mktemp("cifar10"), 40, 10)


@pytest.fixture(scope="session")
def imagenette_folder(tmp_path_factory, shared_datasets) -> Path:
    """Imagenette image folder (224 px): 12 train and 4 val images per class."""
    dest = tmp_path_factory.mktemp("imagenette")
    extract_subset(shared_datasets / "imagenette" / "train.tar.gz", dest, per_class=12)
    extract_subset(shared_datasets / "imagenette" / "val.tar.gz", dest, per_class=4)
    return dest


@pytest.fixture(scope="session")
def tiny_imagenet_folder(tmp_path_factory, shared_datasets) -> Path:
    """Tiny-ImageNet's one labelled split (64 px): val/ only, 5 classes of 6 images each."""
    dest = tmp_path_factory.mktemp("tiny-imagenet")
    extract_subset(shared_datasets / "tiny-imagenet-val" / "val.tar.gz", dest, per_class=6,
                   max_classes=5)
    return dest


@pytest.fixture(scope="session")
def cifar_prepared(cifar_folder, tmp_path_factory) -> Path:
    """`cifar_folder` through `harness prep` (raw pixels): treat as read-only, tests share it."""
    from data_prep import prepare

    out = tmp_path_factory.mktemp("cifar_prepared")
    prepare(str(cifar_folder), out, write_mode="raw", num_workers=2, progress=False)
    return out


@pytest.fixture(scope="module")
def local_ray():
    """The test module's own local Ray instance (2 CPUs, loopback), never one already running."""
    from harness.ray_runtime import ray_session

    with pytest.MonkeyPatch.context() as mp:
        # ray.train.report waits for the controller's poll (2 s by default) once per epoch.
        mp.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        mp.delenv("RAY_ADDRESS", raising=False)
        with ray_session(num_cpus=2):
            yield
