"""harness.storage and `harness pretrain --storage URI` against a real S3 protocol server
(moto, on 127.0.0.1, checking credentials and IAM policies): URIs keep their options, and every
storage problem is a clear error before any training starts, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moto_s3 import moto_server, s3_uri

from harness import storage
from harness.cli import main
from harness.config import ConfigError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_join_keeps_the_query_at_the_end():
    uri = "s3://b/p?endpoint_override=h:1&scheme=http"
    assert storage.join(uri, "run", "metrics.jsonl") == \
        "s3://b/p/run/metrics.jsonl?endpoint_override=h:1&scheme=http"
    assert storage.join("s3://b/p/", "/run/") == "s3://b/p/run"
    # One working folder per URI and name: two runs named alike in two buckets never share it.
    assert storage.local_cache("runs", "s3://a/x", "r") != \
        storage.local_cache("runs", "s3://b/x", "r")


def test_file_uri_round_trip(tmp_path):
    root = f"file://{tmp_path / 'bucket'}"
    run = storage.join(root, "run")
    storage.append_line(storage.join(run, "launches.jsonl"), '{"a": 1}')
    storage.append_line(storage.join(run, "launches.jsonl"), '{"a": 2}')
    assert storage.read_text(storage.join(run, "launches.jsonl")) == '{"a": 1}\n{"a": 2}\n'
    (tmp_path / "local" / "tensorboard").mkdir(parents=True)
    (tmp_path / "local" / "tensorboard" / "events").write_bytes(b"\x00\x01")
    storage.upload(tmp_path / "local", run, "tensorboard")
    assert storage.list_dirs(run) == ["tensorboard"]
    with storage.local_copy(storage.join(run, "tensorboard")) as copy:
        assert (copy / "events").read_bytes() == b"\x00\x01"
    assert not copy.exists()  # the temporary copy is gone
    assert storage.read_text(storage.join(run, "missing.json")) is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with storage.local_copy(storage.join(run, "nothing")):
            pass


@pytest.fixture(scope="module")
def s3():
    """moto with IAM checks on: a `writer` may do anything, a `reader` only read; the bucket
    `runs` exists. The first requests (the set-up) go unchecked."""
    import boto3

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "7"}) as endpoint:
            kw = dict(endpoint_url=endpoint, region_name="us-east-1")
            boto3.client("s3", **kw).create_bucket(Bucket="runs")
            iam = boto3.client("iam", **kw)
            keys = {}
            for user, actions in (("writer", ["s3:*"]),
                                  ("reader", ["s3:Get*", "s3:List*", "s3:Head*"])):
                iam.create_user(UserName=user)
                iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(
                    {"Version": "2012-10-17", "Statement": [
                        {"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
                key = iam.create_access_key(UserName=user)["AccessKey"]
                keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
            keys["nobody"] = ("AKIAIOSFODNN7EXAMPLE", "not-a-key")
            yield endpoint, keys


def _as(keys, who, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys[who][0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys[who][1])


def test_a_writable_bucket_passes_the_check_and_keeps_nothing(s3, monkeypatch):
    endpoint, keys = s3
    _as(keys, "writer", monkeypatch)
    uri = s3_uri(endpoint, "runs", "checked")
    storage.check_uri(uri)
    assert storage.list_dirs(s3_uri(endpoint, "runs")) in ([], ["checked"])
    assert not storage.exists(storage.join(uri, ".harness-write-check"))


def test_s3_uris_get_delayed_open_unless_their_query_sets_it():
    f = storage._with_s3_defaults
    assert f("s3://b/p") == f("s3://b/p?") == "s3://b/p?allow_delayed_open=true"
    assert f("s3://b/p?scheme=http") == "s3://b/p?scheme=http&allow_delayed_open=true"
    for own in ("false", ""):  # the URI's own value, even an empty one, is left as it is
        assert f(f"s3://b/p?allow_delayed_open={own}") == f"s3://b/p?allow_delayed_open={own}"
    # Only the query counts: a folder of that name is a path like any other.
    assert f("s3://b/allow_delayed_open=x") == "s3://b/allow_delayed_open=x?allow_delayed_open=true"
    assert f("gs://b/p") == "gs://b/p" and f("file:///tmp/p") == "file:///tmp/p"


@pytest.mark.parametrize("delayed", [None, "false"])
def test_a_small_s3_write_is_one_put_unless_the_uri_says_otherwise(s3, monkeypatch, delayed):
    """By default (harness.storage._with_s3_defaults) nothing reaches S3 until the file is
    closed, and then one PutObject; a URI with allow_delayed_open=false gets pyarrow's own
    behaviour, a multipart upload opened with the file."""
    import boto3

    endpoint, keys = s3
    _as(keys, "writer", monkeypatch)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=keys["writer"][0],
                          aws_secret_access_key=keys["writer"][1])
    bucket = f"small-{delayed or 'default'}"  # not `runs`, which the tests below keep empty
    client.create_bucket(Bucket=bucket)
    uri = s3_uri(endpoint, bucket, "run")
    if delayed:
        uri += f"&allow_delayed_open={delayed}"
    fs, path = storage.filesystem(storage.join(uri, "metrics.jsonl"))
    with fs.open_output_stream(path) as out:
        out.write(b'{"epoch": 1}\n')
        opened = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert len(opened) == (1 if delayed == "false" else 0)
    assert storage.read_text(storage.join(uri, "metrics.jsonl")) == '{"epoch": 1}\n'


BAD = [  # (who, the URI's bucket/prefix or a whole URI, what the message must say)
    ("writer", "no-such-bucket/p", "the bucket does not exist"),
    ("reader", "runs/p", "access denied"),                 # a read-only prefix
    ("nobody", "runs/p", "access denied"),                 # credentials moto does not know
    ("writer", "unreachable", "cannot be reached"),
    ("writer", "s4://runs/p", "s4:// is not a storage URI scheme"),   # a typo'd scheme
]


@pytest.mark.parametrize("who,where,says", BAD, ids=[b[2] for b in BAD])
def test_bad_storage_fails_before_training_and_writes_nothing(s3, who, where, says, tmp_path,
                                                               cifar_prepared, monkeypatch,
                                                               capsys):
    endpoint, keys = s3
    _as(keys, who, monkeypatch)
    monkeypatch.setenv("BT_STORAGE_CACHE", str(tmp_path / "cache"))
    if where == "unreachable":
        uri = s3_uri("http://127.0.0.1:9", "runs", "p")   # the discard port: nothing listens
    elif "://" in where:
        uri = where
    else:
        uri = s3_uri(endpoint, *where.split("/", 1))
    code = main(["pretrain", str(EXPERIMENTS / "cifar10_cpu.yaml"), "--storage", uri,
                 "--set", f"data.dir={cifar_prepared}", "--set", "data.subset=null"])
    err = capsys.readouterr().err
    assert code == 2 and says in err, err
    assert not (tmp_path / "cache").exists()  # no working folder, no launch record
    _as(keys, "writer", monkeypatch)
    assert storage.list_dirs(s3_uri(endpoint, "runs")) in ([], ["checked"])  # nothing in S3


def test_a_bad_uri_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="cannot open 's3://runs/p\\?bogus=1'"):
        storage.filesystem("s3://runs/p?bogus=1")
