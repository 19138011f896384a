"""`harness cluster init`: a ready cluster file from cluster.yaml, for one bucket and region.

cluster.yaml ships with two placeholders (the bucket, the AMI), which `ray up` would fail on.
This fills them in: the bucket (checked to exist and be reachable), the region and its
availability zones, and the region's newest "Deep Learning Base OSS Nvidia Driver GPU AMI
(Ubuntu 22.04)" looked up with boto3 and pinned as its ID (never an alias that moves), with its
name and date in a comment. The file is edited as text, so every comment of cluster.yaml stays.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

__all__ = ["AMI_NAME", "ClusterInitError", "init_cluster_file"]

AMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)"
PLACEHOLDER_AMI = "ami-0123456789abcdef0"
PLACEHOLDER_BUCKET = "YOUR-BUCKET"
_TEMPLATE = Path(__file__).resolve().parents[1] / "cluster.yaml"
# S3's bucket naming rules: 3-63 characters, lower case, digits, dots and hyphens.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")


class ClusterInitError(ValueError):
    """Bad input or an AWS answer that stops the file from being written; says what to do."""


def _client(service: str, region: str):
    try:
        import boto3
    except ImportError:
        raise ClusterInitError("boto3 is not installed: `pip install boto3` (ray up needs it "
                               "for AWS too), then run this again") from None
    return boto3.client(service, region_name=region)


def newest_ami(region: str) -> dict:
    """The region's newest available image named AMI_NAME..., owned by Amazon."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        images = _client("ec2", region).describe_images(
            Owners=["amazon"], Filters=[{"Name": "name", "Values": [f"{AMI_NAME}*"]},
                                        {"Name": "state", "Values": ["available"]}])["Images"]
    except (BotoCoreError, ClientError) as err:
        raise ClusterInitError(f"could not list the AMIs of {region} ({err}): check your AWS "
                               "credentials (`aws configure`) and the region name") from None
    images = [i for i in images if i.get("Name", "").startswith(AMI_NAME)]
    if not images:
        raise ClusterInitError(f"no '{AMI_NAME}' image in {region}: choose a region that has "
                               "it (most GPU regions do), or set ImageId by hand")
    return max(images, key=lambda i: i["CreationDate"])


def _zones(region: str) -> list[str]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        zones = _client("ec2", region).describe_availability_zones(
            Filters=[{"Name": "state", "Values": ["available"]}])["AvailabilityZones"]
    except (BotoCoreError, ClientError) as err:
        raise ClusterInitError(f"could not list the zones of {region} ({err})") from None
    names = sorted(z["ZoneName"] for z in zones if z.get("ZoneType", "availability-zone")
                   == "availability-zone")
    if not names:
        raise ClusterInitError(f"{region} has no available zone")
    return names[:3]


def _check_bucket(bucket: str, region: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        _client("s3", region).head_bucket(Bucket=bucket)
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise ClusterInitError(f"bucket {bucket!r} does not exist: create it in the "
                                   f"cluster's region, `aws s3 mb s3://{bucket} --region "
                                   f"{region}`, then run this again") from None
        raise ClusterInitError(f"bucket {bucket!r} is not reachable with your credentials "
                               f"({code or err}): check `aws s3 ls s3://{bucket}`") from None
    except BotoCoreError as err:
        raise ClusterInitError(f"could not reach S3 ({err}): check your AWS set-up") from None


def init_cluster_file(bucket: str, region: str, out: Path | str,
                      template: Path | str = _TEMPLATE) -> dict:
    """Write `out` from the template for `bucket` and `region`; returns what was filled in."""
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ClusterInitError(f"--bucket {bucket!r} is not an S3 bucket name (3-63 lower-case "
                               "letters, digits, dots and hyphens; no s3:// prefix)")
    if not _REGION.fullmatch(region):
        raise ClusterInitError(f"--region {region!r} is not an AWS region name (e.g. us-west-2)")
    text = Path(template).read_text()
    for placeholder in (PLACEHOLDER_AMI, PLACEHOLDER_BUCKET):
        if placeholder not in text:
            raise ClusterInitError(f"{template} has no {placeholder} placeholder: start from "
                                   "the repository's cluster.yaml")
    _check_bucket(bucket, region)
    ami, zones = newest_ami(region), _zones(region)
    created = ami["CreationDate"][:10]
    text = text.replace(f"{PLACEHOLDER_AMI}     # placeholder: see 2. above",
                        f"{ami['ImageId']}     # {ami['Name']}, {created}")
    text = text.replace(PLACEHOLDER_AMI, ami["ImageId"]).replace(PLACEHOLDER_BUCKET, bucket)
    text, regions = re.subn(r"(?m)^(  region: )\S+", rf"\g<1>{region}", text)
    text, azs = re.subn(r"(?m)^(  availability_zone: )\S+", rf"\g<1>{','.join(zones)}", text)
    if regions != 1 or azs != 1:
        raise ClusterInitError(f"{template}: expected one provider region and one "
                               "availability_zone line")
    today = datetime.date.today().isoformat()
    header = (f"# Written by `harness cluster init --bucket {bucket} --region {region}` on "
              f"{today}: bucket,\n# region and AMI are filled in; `ray up {Path(out).name}` "
              "needs no editing.\n")
    Path(out).write_text(header + text)
    return {"bucket": bucket, "region": region, "zones": zones, "ami": ami["ImageId"],
            "ami_name": ami["Name"], "ami_created": created}


def cluster_command(args) -> int:
    out = Path(args.out or f"cluster.{args.region}.yaml")
    filled = init_cluster_file(args.bucket, args.region, out)
    print(f"harness cluster init: wrote {out}: bucket {filled['bucket']}, region "
          f"{filled['region']} ({', '.join(filled['zones'])}), AMI {filled['ami']} "
          f"({filled['ami_name']}, {filled['ami_created']})")
    print(f"next: ray up {out}")
    return 0
