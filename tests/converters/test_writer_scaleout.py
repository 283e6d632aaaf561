"""The writer past one process: Ray tasks, an S3 API server, inputs from object storage."""

from __future__ import annotations

import os

import pytest

from converters.text import TextConverter
from converters.writer import StorageError, convert, finalize

from tests.support.s3 import make_bucket
from test_writer import make_inputs, shard_bytes, text_converter


def run(conv, out, tok, **kw):
    kw.setdefault("shard_size", 5_000)
    return convert(conv, out, layout=tok.layout(), tokenizer_path=tok.path, progress=False, **kw)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, inputs, text_tokenizer):
    out = tmp_path_factory.mktemp("ref") / "out"
    run(text_converter(inputs, text_tokenizer), out, text_tokenizer)
    return out


@pytest.fixture
def bucket(s3_server):
    """(an s3fs filesystem on the test server, a new empty bucket's name)."""
    import uuid

    import s3fs
    name = f"b{uuid.uuid4().hex[:12]}"
    make_bucket(name)
    return s3fs.S3FileSystem(skip_instance_cache=True), name


def bucket_shards(fs, prefix) -> dict[str, bytes]:
    return {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in sorted(fs.ls(prefix)) if p.rsplit("/", 1)[-1].startswith("shard-")}


# --- object storage ---------------------------------------------------------------------------------------

def test_out_in_a_bucket_holds_the_same_shards_and_a_rerun_converts_nothing(reference, inputs, text_tokenizer,
                                                                             bucket):
    fs, name = bucket
    url = f"s3://{name}/shards/text"
    res = run(text_converter(inputs, text_tokenizer), url, text_tokenizer, num_partitions=2, partition=0)
    assert not res.complete and not fs.exists(f"{url}/manifest.json")
    again = run(text_converter(inputs, text_tokenizer), url, text_tokenizer, workers=2)  # resumes from the bucket
    assert again.units_converted == res.units_total - res.units_converted
    assert bucket_shards(fs, url) == shard_bytes(reference)
    fs.invalidate_cache()
    assert fs.exists(f"{url}/manifest.json") and fs.exists(f"{url}/tokenizer.model")
    assert not fs.exists(f"{url}/.work/plan.json")
    assert again.manifest.shards == __import__("schemas.manifest").manifest.Manifest.read(reference).shards
    rerun = run(text_converter(inputs, text_tokenizer), url, text_tokenizer)
    assert rerun.up_to_date and rerun.units_converted == 0
    # partitions + finalize straight into the bucket
    url2 = f"s3://{name}/shards/parts"
    for i in range(2):
        run(text_converter(inputs, text_tokenizer), url2, text_tokenizer, num_partitions=2, partition=i)
    assert finalize(url2).shards == again.manifest.shards and bucket_shards(fs, url2) == shard_bytes(reference)


def test_the_cli_reads_inputs_from_a_bucket_and_writes_to_it(reference, inputs, text_tokenizer, bucket,
                                                             tmp_path, monkeypatch, capsys):
    from converters.cli import main
    fs, name = bucket
    for p in inputs:
        fs.put_file(p, f"{name}/raw/{os.path.basename(p)}")
    monkeypatch.setenv("GATO_KIT_INPUT_CACHE", str(tmp_path / "cache"))
    argv = ["text", f"s3://{name}/raw", "--text-tokenizer", str(text_tokenizer.path), "--split", "blank-line",
            "--unit-size", "2000", "--shard-size", "5000", "--out", f"s3://{name}/out", "--no-progress"]
    assert main(argv) == 0
    ref_rows = __import__("test_writer").all_rows(reference)
    local = tmp_path / "copy"
    fs.get(f"{name}/out", str(local), recursive=True)
    rows = __import__("test_writer").all_rows(local)
    assert rows.drop(["source_id"]).equals(ref_rows.drop(["source_id"]))  # source ids name the cache path
    assert main(argv) == 0 and "up to date" in capsys.readouterr().err


def test_an_unreachable_store_is_one_line_exit_1(inputs, text_tokenizer, s3_server, monkeypatch, capsys):
    import socket

    from converters.cli import main
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")  # nothing listens there
    monkeypatch.setenv("GATO_KIT_STORE_ATTEMPTS", "1")  # one try: no retry lines before the error
    argv = ["text", *inputs, "--text-tokenizer", str(text_tokenizer.path), "--split", "blank-line",
            "--out", "s3://nowhere/out", "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gato-tokenize: error: s3://nowhere/out: cannot")
    with pytest.raises(StorageError):
        run(text_converter(inputs, text_tokenizer), "s3://nowhere/out", text_tokenizer)


# --- Ray --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([os.getcwd(), os.path.dirname(__file__),
                                                                      os.path.dirname(os.path.dirname(__file__))])}})
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_writes_the_same_bytes(reference, inputs, text_tokenizer, tmp_path, local_ray):
    res = run(text_converter(inputs, text_tokenizer), tmp_path / "out", text_tokenizer, engine="ray")
    assert res.units_converted == res.units_total
    assert shard_bytes(tmp_path / "out") == shard_bytes(reference)


class DiesOnce(TextConverter):
    """Kills its own Ray worker (SIGKILL) halfway through unit `victim`, the first time only."""

    victim: str = ""
    flag: str = ""

    def convert_unit(self, unit):
        import signal
        for k, rec in enumerate(super().convert_unit(unit)):
            if unit.key == self.victim and k == 5 and not os.path.exists(self.flag):
                open(self.flag, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            yield rec


@pytest.mark.slow
def test_a_ray_worker_killed_mid_unit_is_retried_with_the_same_bytes(reference, inputs, text_tokenizer, tmp_path,
                                                                      local_ray):
    import converters.writer.unit as unit_module
    conv = text_converter(inputs, text_tokenizer, DiesOnce)
    conv.victim, conv.flag = conv.work_units()[3].key, str(tmp_path / "killed")
    assert unit_module.BATCH_ROWS > 5  # the kill lands inside a unit's first batch
    res = run(conv, tmp_path / "out", text_tokenizer, engine="ray")
    assert os.path.exists(conv.flag) and res.complete
    assert shard_bytes(tmp_path / "out") == shard_bytes(reference)
    assert not list((tmp_path / "out").rglob("*tmp*"))
