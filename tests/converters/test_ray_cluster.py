"""--engine ray on real multi-node clusters (ray.cluster_utils: one raylet per node, as `ray start`
makes them): tasks on nodes started without the driver's storage settings still reach the bucket
(Ray's runtime environment carries them), and a cluster without CPUs is said so, not waited on."""

from __future__ import annotations

import os
import sys
import time

import pytest

from tests.support.s3 import make_bucket
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


def _descendants(pid: int) -> list[int]:
    from pathlib import Path
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


@pytest.fixture
def cluster_with_a_node_apart(tmp_path):
    """A head without CPUs and one worker node started by `ray start` in its own mount namespace,
    where the driver's input cache folder is an empty tmpfs: the node cannot see the driver's
    copies of the inputs (as a machine that shares no disk with it). Yields (address, cache)."""
    import shutil
    import signal
    import subprocess
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a node apart needs a mount namespace (root and unshare)")
    cache = tmp_path / "driver-cache"
    cache.mkdir()
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # nor the store's settings
    node = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs {cache} && exec {ray_bin} start --address={cluster.address} --num-cpus=1 --block"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and len([n for n in ray_nodes(cluster.address) if n["Alive"]]) < 2:
            time.sleep(0.5)
        yield cluster.address, cache
    finally:
        procs = [node.pid, *_descendants(node.pid)]
        for pid in reversed(procs):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        for pid in procs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        ray.shutdown()
        cluster.shutdown()


def ray_nodes(address: str) -> list[dict]:
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": _PYTHONPATH}})
    return ray.nodes()


def test_a_node_that_cannot_see_the_drivers_disk_fetches_url_inputs_itself(inputs, text_tokenizer, s3_server,
                                                                           cluster_with_a_node_apart, tmp_path,
                                                                           monkeypatch):
    import s3fs

    from converters.cli import main
    address, cache = cluster_with_a_node_apart
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    make_bucket("apart")
    for p in inputs:
        fs.put_file(p, f"apart/raw/{os.path.basename(p)}")
    monkeypatch.setenv("GATO_KIT_INPUT_CACHE", str(cache))
    (cache / "driver-only").write_text("the driver's disk")
    sees = ray.remote(num_cpus=1)(lambda p: os.path.exists(p))
    assert not ray.get(sees.remote(str(cache / "driver-only")))  # the node's view of that folder is its own
    argv = ["text", "s3://apart/raw", "--text-tokenizer", str(text_tokenizer.path), "--split", "blank-line",
            "--unit-size", "2000", "--shard-size", "5000", "--no-progress"]
    assert main([*argv, "--out", "s3://apart/out", "--engine", "ray", "--ray-address", address]) == 0
    assert main([*argv, "--out", str(tmp_path / "local")]) == 0  # same cached inputs, this machine only
    assert bucket_shards(fs, "apart/out") == shard_bytes(tmp_path / "local")
    assert ray.get(sees.remote(str(cache / "s3/apart/raw" / os.path.basename(inputs[0]))))  # fetched there


def test_ctrl_c_stops_a_ray_conversion_promptly(text_tokenizer, tmp_path):
    """SIGINT while every unit is running (each sleeps a minute): the driver cancels them, shuts
    down its Ray and exits 130 within seconds."""
    import signal
    import subprocess
    inputs = make_inputs(tmp_path / "in", files=2)
    flag = tmp_path / "started"
    code = ("import sys, time, pathlib; from converters.text import TextConverter; import converters.text as t\n"
            "class Slow(TextConverter):\n"
            "    def convert_unit(self, unit):\n"
            f"        pathlib.Path({str(flag)!r}).touch(); time.sleep(60); yield from super().convert_unit(unit)\n"
            "t.TextConverter = Slow\n"
            "from converters.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = ["text", *inputs, "--text-tokenizer", str(text_tokenizer.path), "--split", "blank-line",
            "--out", str(tmp_path / "out"), "--no-progress", "--engine", "ray", "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": _PYTHONPATH, "RAY_ADDRESS": ""})
    try:
        deadline = time.time() + 120
        while not flag.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert flag.exists(), proc.stderr.read() if proc.poll() is not None else "no unit started"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=45)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert code == 130 and "interrupted" in err, err[-2000:]
    assert took < 20, took


class SlowText(__import__("converters.text", fromlist=["TextConverter"]).TextConverter):
    """Marks that a unit started, then takes a minute."""

    flag: str = ""

    def convert_unit(self, unit):
        open(self.flag, "w").close()
        time.sleep(60)
        yield from super().convert_unit(unit)


def test_a_cluster_that_loses_its_only_cpu_node_mid_run_is_said_so(inputs, text_tokenizer, tmp_path, monkeypatch):
    import threading

    import converters.writer.engines as engines
    monkeypatch.setattr(engines, "RAY_NO_CPU_SECONDS", 3.0)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    node = cluster.add_node(num_cpus=1)
    conv = text_converter(inputs, text_tokenizer, SlowText)
    conv.flag = str(tmp_path / "started")

    def lose_the_node():
        deadline = time.time() + 120
        while not os.path.exists(conv.flag) and time.time() < deadline:
            time.sleep(0.2)
        cluster.remove_node(node, allow_graceful=False)

    try:
        ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": _PYTHONPATH}})
        threading.Thread(target=lose_the_node, daemon=True).start()
        t0 = time.monotonic()
        with pytest.raises(SourceError, match="no CPU for 3 s, so the .* remaining units cannot run"):
            run(conv, tmp_path / "out", text_tokenizer, engine="ray")
        assert os.path.exists(conv.flag) and time.monotonic() - t0 < 60
    finally:
        ray.shutdown()
        cluster.shutdown()
