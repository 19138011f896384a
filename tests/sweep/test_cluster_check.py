"""`check_cluster` (what `harness sweep --address` runs before any trial) against a real local
Ray instance: a pass that leaves nothing behind, and each problem it must name."""

import pytest

from harness.ray_runtime import ray_session  # noqa: F401  (first: Ray's environment)

from harness.sweep.cluster_check import ClusterError, check_cluster  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.usefixtures("local_ray")
class TestCheckCluster:

    def test_passes_and_leaves_nothing_behind(self, cifar_prepared, tmp_path):
        check_cluster(gpus_per_trial=0, cpus_per_trial=2, data_dirs=[str(cifar_prepared)],
                      storage_path=str(tmp_path / "runs"))
        assert list((tmp_path / "runs").iterdir()) == []
        # A URI goes through pyarrow.fs, as s3://bucket/dir does on a cluster.
        check_cluster(gpus_per_trial=0, cpus_per_trial=1, data_dirs=[],
                      storage_path=f"file://{tmp_path / 'uri'}")

    def test_missing_data_dir(self, cifar_prepared, tmp_path):
        with pytest.raises(ClusterError) as err:
            check_cluster(gpus_per_trial=0, cpus_per_trial=1,
                          data_dirs=[str(cifar_prepared), str(tmp_path / "nope")],
                          storage_path=str(tmp_path / "runs"))
        message = str(err.value)
        assert f"{tmp_path / 'nope'} is not a prepared data set" in message
        assert "node 127.0.0.1" in message and "harness stage" in message
        assert f"--to {tmp_path} --only nope" in message
        assert str(cifar_prepared) not in message.replace(str(tmp_path / "nope"), "")

    def test_too_many_gpus_and_cpus(self, cifar_prepared, tmp_path):
        with pytest.raises(ClusterError) as err:
            check_cluster(gpus_per_trial=4, cpus_per_trial=3, data_dirs=[str(cifar_prepared)],
                          storage_path=str(tmp_path / "runs"))
        assert "one trial needs 4 GPUs, the cluster has 0 now" in str(err.value)
        assert "one trial needs 3 CPUs, the cluster has 2 now" in str(err.value)

    def test_unwritable_storage(self, cifar_prepared, tmp_path):
        # Root writes through file modes; a regular file in the path stops anyone.
        (tmp_path / "file").write_text("")
        with pytest.raises(ClusterError) as err:
            check_cluster(gpus_per_trial=0, cpus_per_trial=1, data_dirs=[str(cifar_prepared)],
                          storage_path=str(tmp_path / "file" / "runs"))
        assert f"cannot write to storage {tmp_path / 'file' / 'runs'}" in str(err.value)
