"""--engine ray on real multi-node clusters (ray.cluster_utils: one raylet per node, as `ray start`
makes them): tasks on nodes started without the driver's storage settings still reach the bucket
(Ray's runtime environment carries them), and a cluster without CPUs is said so, not waited on."""

from __future__ import annotations

import os
import time

import pytest

from conftest import make_bucket
from converters.base import SourceError
from test_writer import make_inputs, shard_bytes, text_converter
from test_writer_scaleout import bucket_shards, run

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow

_PYTHONPATH = os.pathsep.join([os.getcwd(), os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs"), files=3)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, inputs, text_tokenizer):
    out = tmp_path_factory.mktemp("ref") / "out"
    run(text_converter(inputs, text_tokenizer), out, text_tokenizer)
    return out


def test_tasks_on_nodes_without_the_drivers_credentials_write_to_the_bucket(reference, inputs, text_tokenizer,
                                                                            s3_server, tmp_path):
    import s3fs
    make_bucket("raynodes")
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AWS_")}
    try:  # two worker nodes whose raylets (and so their workers) never saw the endpoint or the keys
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        nodes = [cluster.add_node(num_cpus=1, resources={f"node{i}": 1}) for i in range(2)]
    finally:
        os.environ.update(saved)
    try:
        ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": _PYTHONPATH}})
        assert not any(k.startswith("AWS_") for k in ray.get(ray.remote(num_cpus=1)(lambda: dict(os.environ))
                                                             .remote()))  # the nodes' own environment
        res = run(text_converter(inputs, text_tokenizer), "s3://raynodes/out", text_tokenizer, engine="ray")
        assert res.complete and res.units_converted == res.units_total
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        assert bucket_shards(fs, "raynodes/out") == shard_bytes(reference)
        assert len(nodes) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_cluster_without_cpus_is_said_so_and_the_run_stops(inputs, text_tokenizer, tmp_path, monkeypatch):
    import converters.writer.engines as engines
    monkeypatch.setattr(engines, "RAY_NO_CPU_SECONDS", 3.0)
    ray.init(num_cpus=0, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.monotonic()
        with pytest.raises(SourceError, match="no CPU for 3 s, so the .* remaining units cannot run"):
            run(text_converter(inputs, text_tokenizer), tmp_path / "out", text_tokenizer, engine="ray")
        assert time.monotonic() - t0 < 60
    finally:
        ray.shutdown()
