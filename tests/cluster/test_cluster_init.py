"""`harness cluster init` against a real AWS API server (moto, on 127.0.0.1): the bucket
checked, the region's newest matching AMI pinned, and a file that Ray's own validator takes."""

import json
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.cluster_init import AMI_NAME
from moto_s3 import TEST_CREDENTIALS, moto_server

REPO = Path(__file__).resolve().parents[2]

# What the region offers: two releases of the AMI (the newer must win), its Ubuntu 20.04
# sibling and an unrelated image, both newer still (neither may be picked).
IMAGES = [
    {"ami_id": "ami-0aaaaaaaaaaaaaaa1", "name": f"{AMI_NAME} 20260310",
     "creation_date": "2026-03-10T10:00:00.000Z"},
    {"ami_id": "ami-0bbbbbbbbbbbbbbb2", "name": f"{AMI_NAME} 20261015",
     "creation_date": "2026-10-15T10:00:00.000Z"},
    {"ami_id": "ami-0ccccccccccccccc3",
     "name": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 20.04) 20261120",
     "creation_date": "2026-11-20T10:00:00.000Z"},
    {"ami_id": "ami-0ddddddddddddddd4", "name": "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04",
     "creation_date": "2026-11-25T10:00:00.000Z"},
]


@pytest.fixture
def aws(tmp_path, monkeypatch):
    amis = tmp_path / "amis.json"
    amis.write_text(json.dumps([{**i, "state": "available", "public": True,
                                 "owner_id": "898082745236", "root_device_type": "ebs",
                                 "root_device_name": "/dev/sda1", "architecture": "x86_64",
                                 "virtualization_type": "hvm", "hypervisor": "xen",
                                 "image_type": "machine", "description": i["name"]}
                                for i in IMAGES]))
    with moto_server({"MOTO_AMIS_PATH": str(amis)}) as endpoint:
        for key, value in {**TEST_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(key, value)
        import boto3

        boto3.client("s3", region_name="eu-west-1").create_bucket(
            Bucket="bt-results", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        yield


def test_writes_a_file_ray_up_takes_as_it_is(aws, tmp_path, capsys):
    from ray.autoscaler._private.util import prepare_config, validate_config

    out = tmp_path / "cluster.eu-west-1.yaml"
    assert main(["cluster", "init", "--bucket", "bt-results", "--region", "eu-west-1",
                 "--out", str(out)]) == 0
    assert f"AMI ami-0bbbbbbbbbbbbbbb2 ({AMI_NAME} 20261015" in capsys.readouterr().out
    text = out.read_text()
    config = yaml.safe_load(text)
    validate_config(prepare_config(config))  # what `ray up` runs first: defaults, then schema
    assert config["provider"]["region"] == "eu-west-1"
    assert config["provider"]["availability_zone"].split(",")[0] == "eu-west-1a"
    images = {n["node_config"]["ImageId"] for n in config["available_node_types"].values()}
    assert images == {"ami-0bbbbbbbbbbbbbbb2"}
    assert "YOUR-BUCKET" not in text and "ami-0123456789abcdef0" not in text
    assert "harness stage s3://bt-results/barlow-harness/data" in text
    # Everything else is cluster.yaml as it is, comments included.
    template = (REPO / "cluster.yaml").read_text().splitlines()
    kept = set(text.splitlines())
    changed = [line for line in template if line not in kept]
    assert len(changed) <= 6, changed  # region, zones, the AMI line, the bucket lines


def test_says_what_to_do_before_writing_anything(aws, tmp_path, capsys):
    out = tmp_path / "c.yaml"
    assert main(["cluster", "init", "--bucket", "no-such-bucket", "--region", "eu-west-1",
                 "--out", str(out)]) == 2
    assert "aws s3 mb s3://no-such-bucket --region eu-west-1" in capsys.readouterr().err
    assert main(["cluster", "init", "--bucket", "s3://bt-results", "--region", "eu-west-1",
                 "--out", str(out)]) == 2
    assert "is not an S3 bucket name" in capsys.readouterr().err
    assert main(["cluster", "init", "--bucket", "bt-results", "--region", "westeurope",
                 "--out", str(out)]) == 2
    assert "is not an AWS region name" in capsys.readouterr().err
    assert not out.exists()
