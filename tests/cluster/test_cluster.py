"""The cluster files and the cluster check, launched for real on this machine.

- Every cluster*.yaml passes Ray's own validation the way `ray up` runs it; broken copies fail.
- A local-provider cluster over SSH to 127.0.0.1: `ray up`, a worker node that the head's
  autoscaler logs in to and starts, `ray exec`, a `harness` job through `ray job submit` with a
  training worker on each node, `ray down`, and no Ray process left.
- cluster.yaml itself, launched against moto's EC2/IAM server: head created, set up (checkout
  synced, setup.sh, data staged, Ray started), torn down.
The launches run in a sandbox with only loopback (tests/loopback_sandbox.py): nothing leaves
the machine, and `ray stop` there cannot touch another Ray on it.
"""

import json
import re
import shutil
import sys
import time
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml

from harness.ray_runtime import ray_session  # noqa: F401  (first: Ray's environment)

import ray  # noqa: E402
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

from conftest import REPO, cifar_image_folder  # noqa: E402
from data_prep import prepare  # noqa: E402
from loopback_sandbox import Sandbox, Sshd, unavailable  # noqa: E402
from processes import guard  # noqa: E402

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
CLUSTER_FILES = sorted(REPO.glob("cluster*.yaml"))
# Ray keeps one ssh control socket per user and cluster name in /tmp, outside any sandbox:
# two test runs on one machine (a run beside CI) must not share one, so each names its own.
RUN_TAG = uuid.uuid4().hex[:8]
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_USAGE_STATS_ENABLED": "0"}


def ray_up_config(path: Path) -> dict:
    """What `ray up` makes of a cluster file before it talks to any cloud (_bootstrap_config)."""
    config = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(config)
    return config


# ---------------------------------------------------------------- schema


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_passes_ray_validation(path):
    config = ray_up_config(path)
    nodes = config["available_node_types"]
    assert config["provider"]["type"] in ("aws", "gcp")
    # Pinned images: an ID, never an alias that moves (`latest`, SSM parameters, families).
    for name, node in nodes.items():
        image = node["node_config"].get("ImageId") or node["node_config"].get("sourceImage", "")
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}|projects/.+/global/images/[a-z0-9-]+", image), \
            (name, image)
        assert "latest" not in image
    gpu_types = [n for n, node in nodes.items() if n != config["head_node_type"]]
    assert len(gpu_types) >= 2 and all(nodes[n]["max_workers"] >= 1 for n in gpu_types)
    commands = "\n".join(config["setup_commands"] + config["head_start_ray_commands"])
    # The project and its pinned Ray from constraints.txt, FFCV's native libraries, the data.
    for needed in ("scripts/setup.sh", "libopencv-dev", "libturbojpeg0-dev", "harness stage",
                   "--dashboard-host=127.0.0.1"):
        assert needed in commands, needed
    assert f"ray=={ray.__version__}" in (REPO / "constraints.txt").read_text().splitlines()
    text = path.read_text().lower()
    assert not re.search(r"aws_secret|secret_access_key|akia[0-9a-z]{16}|private_key", text)


@pytest.mark.parametrize("breakage", ["typo", "type"])
def test_broken_cluster_file_fails_validation(breakage):
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    if breakage == "typo":
        config["idle_timeout_minute"] = config.pop("idle_timeout_minutes")
    else:
        config["max_workers"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))


# ---------------------------------------------------------------- check_cluster


@pytest.fixture(scope="module")
def cifar_small_folder(tmp_path_factory, shared_datasets) -> Path:
    """A small real CIFAR-10 folder: 10 train and 2 test images per class."""
    return cifar_image_folder(shared_datasets, tmp_path_factory.mktemp("cifar_small"), 10, 2)


@pytest.fixture(scope="module")
def cifar_small_prepared(cifar_small_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cifar_small_prepared") / "cifar_small"
    prepare(str(cifar_small_folder), out, write_mode="raw", num_workers=1, progress=False)
    return out


# ---------------------------------------------------------------- real launches


@pytest.fixture
def sandbox(tmp_path):
    reason = unavailable()
    if reason:
        pytest.skip(f"cluster launch sandbox: {reason}")
    home = tmp_path / "home"
    home.mkdir()
    # A login shell reads ~/.bashrc through ~/.profile, as on Ubuntu (cluster.yaml adds the
    # venv's bin to PATH there, so that `ray stop` of `ray down` finds Ray).
    (home / ".profile").write_text('[ -f "$HOME/.bashrc" ] && . "$HOME/.bashrc"\n')
    env = {"PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home),
           "TMPDIR": str(tmp_path), "LANG": "C.UTF-8", **RAY_ENV}
    box = Sandbox(env)
    # Token authentication on (RAY_AUTH_MODE=token): the head and every client read the
    # token from this HOME, as a cluster's nodes would from a synced ~/.ray/auth_token.
    box.run([str(VENV_BIN / "ray"), "get-auth-token", "--generate"])
    # Ray's ssh control sockets: /tmp/ray_ssh_<user hash>/<cluster name hash>. The user's
    # folder is shared with any other run on the machine; only this test's cluster folders go.
    control = set(Path("/tmp").glob("ray_ssh_*/*"))
    yield box
    box.close()
    for leftover in set(Path("/tmp").glob("ray_ssh_*/*")) - control:
        shutil.rmtree(leftover, ignore_errors=True)


def _session_env(sandbox: Sandbox) -> dict[str, str]:
    # What a login on the head sees: the same HOME (bootstrap files, Ray's auth token) and
    # Ray kept on 127.0.0.1.
    return {"HOME": sandbox.env["HOME"], **RAY_ENV}


def test_local_provider_cluster_up_exec_job_down(sandbox, tmp_path, cifar_small_folder):
    """A head and one worker node: `ray up` sets up the head, the head's autoscaler logs in to
    the worker's address (`localhost`: the local provider names each node by its address, and
    this machine has one loopback) and starts Ray there; a job's two training workers run one
    on each node."""
    sshd = Sshd(sandbox, tmp_path / "sshd", _session_env(sandbox))
    ray_bin = VENV_BIN / "ray"
    cluster = tmp_path / "local.yaml"
    cluster.write_text(yaml.safe_dump({
        "cluster_name": f"barlow-local-test-{RUN_TAG}",
        "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": ["localhost"]},
        "auth": {"ssh_user": "root", "ssh_private_key": str(sshd.key)},
        "setup_commands": [f"grep -q {VENV_BIN} ~/.bashrc || "
                           f"echo 'export PATH=\"{VENV_BIN}:$PATH\"' >> ~/.bashrc"],
        # The head's autoscaler looks for work every second, not every 5 (Ray's default):
        # the worker is launched sooner; nothing else changes.
        "head_start_ray_commands": [
            f"{ray_bin} stop",
            f"AUTOSCALER_UPDATE_INTERVAL_S=1 {ray_bin} start --head --node-ip-address=127.0.0.1 "
            "--port=6379 --num-cpus=1 --dashboard-host=127.0.0.1 "
            "--autoscaling-config=~/ray_bootstrap_config.yaml --disable-usage-stats"],
        # No `ray stop` first: the worker shares the head's machine, and it would stop the
        # head. `ray start --address` joins only with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1,
        # which in the sandbox (loopback only) leaves every address at 127.0.0.1.
        "worker_start_ray_commands": [
            f"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 {ray_bin} start --address=$RAY_HEAD_IP:6379 "
            "--node-ip-address=127.0.0.1 --num-cpus=1 --disable-usage-stats"],
    }))
    timings = {}
    start = time.monotonic()
    # Autoscaler v1: v2 (`ray up`'s default since Ray 2.50) never launched the local
    # provider's worker here (it found its own head "no longer" there and kept "adding 1 node").
    sandbox.run(["env", "RAY_UP_enable_autoscaler_v2=0", str(ray_bin), "up", "-y",
                 "--no-config-cache", str(cluster)], timeout=guard(45))
    timings["ray up"] = time.monotonic() - start

    # The autoscaler brings the worker up on its own (min_workers: every worker address).
    # `ray status` counts it ("2 local.cluster.node") but sums resources per address, so the
    # nodes and their CPUs are read from Ray's node table.
    (tmp_path / "nodes.py").write_text(
        "import ray\nray.init(address='auto', logging_level='ERROR')\n"
        "alive = [n for n in ray.nodes() if n['Alive']]\n"
        "print('NODES', len(alive), sum(n['Resources'].get('CPU', 0) for n in alive))\n")
    start = time.monotonic()
    deadline = start + guard(60)
    while True:
        out = sandbox.run([str(ray_bin), "exec", str(cluster),
                           f"ray status && echo HOME=$HOME && python {tmp_path / 'nodes.py'}"],
                          timeout=guard(15)).stdout
        if "NODES 2 2.0" in out:
            break
        assert time.monotonic() < deadline, f"the worker did not join: {out[-3000:]}"
        time.sleep(2)
    timings["worker joined"] = time.monotonic() - start
    assert f"HOME={sandbox.env['HOME']}" in out and " 2 local.cluster.node" in out, out

    data, runs = tmp_path / "data", tmp_path / "runs"
    overrides = ["epochs=1", "warmup_epochs=0", "batch_size=32", f"data.dir={data}",
                 "data.subset=null", "data.resolution=16", "model.projector=64-64",
                 "probe.enabled=false", "run.log_every_steps=0",
                 "workers.placement=STRICT_SPREAD"]       # one training worker on each node
    job = (f"{VENV_BIN}/harness prep {cifar_small_folder} --out {data} --write-mode raw "
           f"--workers 1 && {VENV_BIN}/harness pretrain {REPO}/experiments/cifar10_cpu.yaml "
           + " ".join(f"--set {o}" for o in overrides)
           + f" --name on-cluster --storage {runs} --address auto")
    start = time.monotonic()
    out = sandbox.run([str(ray_bin), "job", "submit", "--address", "http://127.0.0.1:8265",
                       "--", "bash", "-c", job], timeout=guard(60)).stdout
    timings["job"] = time.monotonic() - start
    assert "succeeded" in out, out[-3000:]
    assert (data / "manifest.json").is_file()
    assert (runs / "on-cluster" / "export" / "backbone.pt").is_file()
    launch = json.loads((runs / "on-cluster" / "launches.jsonl").read_text().splitlines()[-1])
    assert launch["address"] == "auto"
    (epoch,) = [json.loads(line) for line in
                (runs / "on-cluster" / "metrics.jsonl").read_text().splitlines()]
    assert epoch["workers/nodes"] == 2

    start = time.monotonic()
    sandbox.run([str(ray_bin), "down", "-y", str(cluster)], timeout=guard(30))
    timings["ray down"] = time.monotonic() - start
    assert sandbox.ray_processes() == []
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})


MOTO_PORT = 5000
TEST_BUCKET = "bt-test"
AWS_ENV = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{MOTO_PORT}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-west-2",
           "AWS_EC2_METADATA_DISABLED": "true"}


def _moto_copy(tmp_path: Path, sshd: Sshd) -> Path:
    """cluster.yaml as a test can launch it, every change named here.

    - auth: root with the test's key (imported into moto as `barlow-test`), and SSH to any
      instance address routed to the sandbox's sshd by a proxy command;
    - the apt line goes: it would install packages from the internet onto this machine;
    - the bucket is `bt-test` on moto's S3 (as `harness cluster init` fills it in), which the
      nodes reach through AWS_ENDPOINT_URL in their environment.
    """
    config = yaml.safe_load((REPO / "cluster.yaml").read_text().replace("YOUR-BUCKET",
                                                                       TEST_BUCKET))
    config["cluster_name"] = f"{config['cluster_name']}-{RUN_TAG}"  # its own ssh control path
    config["auth"] = {"ssh_user": "root", "ssh_private_key": str(sshd.key),
                      "ssh_proxy_command": "bash -c 'exec 3<>/dev/tcp/127.0.0.1/22; "
                                           "cat <&3 & exec cat >&3'"}
    for node in config["available_node_types"].values():
        node["node_config"]["KeyName"] = "barlow-test"
    config["setup_commands"] = [c for c in config["setup_commands"] if "apt-get" not in c]
    path = tmp_path / "cluster-moto.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _aws(sandbox: Sandbox, call: str, script: str = "") -> list:
    """Run `script`, then evaluate `call`, with boto3 clients `ec2` and `iam` against moto inside
    the sandbox; the call's JSON result."""
    code = ("import boto3, json, sys\nec2, iam = boto3.client('ec2'), boto3.client('iam')\n"
            f"{script}\nprint(json.dumps({call}, default=str))")
    out = sandbox.run([sys.executable, "-c", code], timeout=guard(15)).stdout
    return json.loads(out.splitlines()[-1])


UPLOAD_DATA = """
from pathlib import Path
s3 = boto3.client("s3")
s3.create_bucket(Bucket="{bucket}",
                 CreateBucketConfiguration={{"LocationConstraint": "us-west-2"}})
root = Path("{folder}")
for path in sorted(p for p in root.rglob("*") if p.is_file()):
    s3.upload_file(str(path), "{bucket}", "{prefix}/" + path.relative_to(root).as_posix())
"""


# The account as Ray's first `ray up` in it leaves it: Ray's default head role (EC2 and S3 full
# access) in its default instance profile. Creating them from nothing is Ray's code, not ours,
# and costs two fixed 15 s sleeps there (IAM propagation).
RAY_DEFAULT_PROFILE = """
from ray.autoscaler._private.aws.config import DEFAULT_RAY_IAM_ROLE as role
from ray.autoscaler._private.aws.config import DEFAULT_RAY_INSTANCE_PROFILE as profile
trust = {"Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                        "Action": "sts:AssumeRole"}]}
iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))
for policy in ("AmazonEC2FullAccess", "AmazonS3FullAccess"):
    iam.attach_role_policy(RoleName=role, PolicyArn=f"arn:aws:iam::aws:policy/{policy}")
iam.create_instance_profile(InstanceProfileName=profile)
iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=role)
"""


def test_aws_cluster_file_launches_against_moto(sandbox, tmp_path, cifar_small_prepared):
    sandbox.env.update(AWS_ENV)
    moto_env = tmp_path / "moto.log"
    sandbox.env["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
    sandbox.start([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(MOTO_PORT)],
                  moto_env)
    sandbox.wait_port(MOTO_PORT)
    # The prepared data set in the bucket, where the nodes' `harness stage` looks for it.
    _aws(sandbox, "sorted(k['Key'] for k in boto3.client('s3').list_objects_v2(Bucket="
                  f"'{TEST_BUCKET}')['Contents'])", UPLOAD_DATA.format(
                      bucket=TEST_BUCKET, folder=cifar_small_prepared,
                      prefix=f"barlow-harness/data/{cifar_small_prepared.name}"))
    sshd = Sshd(sandbox, tmp_path / "sshd", {**_session_env(sandbox), **AWS_ENV})
    _aws(sandbox, "ec2.import_key_pair(KeyName='barlow-test', PublicKeyMaterial="
                  f"open('{sshd.key}.pub').read())['KeyName']")
    profile_arn = _aws(sandbox, "iam.get_instance_profile(InstanceProfileName=profile)"
                                "['InstanceProfile']['Arn']", RAY_DEFAULT_PROFILE)
    # The checkout ray up syncs to ~/barlow-harness, with this venv in place of a fresh one
    # (scripts/setup.sh then finds everything installed and returns at once).
    checkout = Path(sandbox.env["HOME"]) / "barlow-harness"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(REPO / ".venv")
    cluster = _moto_copy(tmp_path, sshd)

    start = time.monotonic()
    out = sandbox.run([str(VENV_BIN / "ray"), "up", "-y", "--no-config-cache", str(cluster)],
                      timeout=guard(60), cwd=REPO).stdout
    took_up = time.monotonic() - start
    running = _aws(sandbox, "[i for r in ec2.describe_instances()['Reservations'] for i in "
                            "r['Instances'] if i['State']['Name'] == 'running']")
    assert len(running) == 1, out[-3000:]
    tags = {t["Key"]: t["Value"] for t in running[0]["Tags"]}
    assert tags["ray-node-type"] == "head" and tags["ray-user-node-type"] == "head"
    assert running[0]["InstanceType"] == "m5.2xlarge"
    assert running[0]["IamInstanceProfile"]["Arn"] == profile_arn
    # Set up: the checkout synced without git-ignored files, the data set staged to local disk.
    assert (checkout / "scripts" / "setup.sh").is_file()
    assert not list(checkout.rglob("__pycache__"))
    staged = checkout / "runs" / "main" / "data" / cifar_small_prepared.name
    assert (staged / "manifest.json").is_file()
    assert sandbox.ray_processes(), "ray start --head did not leave Ray running on the head"

    sandbox.run([str(VENV_BIN / "ray"), "down", "-y", str(cluster)], timeout=guard(30), cwd=REPO)
    states = _aws(sandbox, "[i['State']['Name'] for r in ec2.describe_instances()"
                           "['Reservations'] for i in r['Instances']]")
    assert states == ["terminated"]
    assert sandbox.ray_processes() == []
    print(f"timings (s): ray up {took_up:.1f}")
