"""What a kill -9 of the converter leaves: no pool workers living on, and no unfinished multipart
upload in the bucket once the same command runs again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.s3 import make_bucket
from test_writer import make_inputs, text_converter
from test_writer_scaleout import run

SLOW = ("import sys, time; from converters.text import TextConverter; import converters.text as t\n"
        "class Slow(TextConverter):\n"
        "    def convert_unit(self, unit):\n"
        "        time.sleep(30); yield from super().convert_unit(unit)\n"
        "t.TextConverter = Slow\n"
        "from converters.cli import main; sys.exit(main(sys.argv[1:]))")


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_pool_workers_die_with_a_killed_driver(text_tokenizer, tmp_path):
    inputs = make_inputs(tmp_path / "in", files=4)
    argv = ["text", *inputs, "--text-tokenizer", str(text_tokenizer.path), "--split", "blank-line",
            "--out", str(tmp_path / "out"), "--no-progress", "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW, *argv], env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.time() + 60
        while len(kids := _children(proc.pid)) < 2 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the workers have run their initialiser and sleep inside a unit
        assert len(kids) >= 2 and all(_alive(k) for k in kids)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 10
    while any(_alive(k) for k in kids) and time.time() < deadline:
        time.sleep(0.1)
    survivors = [k for k in kids if _alive(k)]
    for k in survivors:  # never leave one behind, even when the test fails
        os.kill(k, signal.SIGKILL)
    assert not survivors


UPLOAD = ("import os, sys; from schemas.storage import OutDir\n"
          "with OutDir(sys.argv[1]).staged('shard-00000-000.arrow') as tmp:\n"
          "    with open(tmp, 'wb') as f:\n"
          "        for _ in range(120): f.write(os.urandom(1 << 20))\n")


def _uploads(fs, bucket: str) -> list[dict]:
    return fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])


@pytest.mark.slow
def test_a_kill_during_a_multipart_upload_leaves_nothing_after_the_rerun(text_tokenizer, s3_server, tmp_path):
    """A 120 MB shard goes up in parts (s3fs: multipart past 2 x 50 MB); kill -9 mid-upload, and the
    same command's re-run aborts the unfinished upload of its own unit (never another's)."""
    import s3fs
    make_bucket("uploads")
    url = "s3://uploads/out"
    proc = subprocess.Popen([sys.executable, "-c", UPLOAD, url], env={**os.environ, "PYTHONPATH": os.getcwd()})
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    try:
        deadline = time.time() + 120
        while not _uploads(fs, "uploads") and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [u["Key"] for u in _uploads(fs, "uploads")] == ["out/shard-00000-000.arrow"]
    fs.call_s3("create_multipart_upload", Bucket="uploads", Key="other/shard-00000-000.arrow")  # another OUT's
    inputs = make_inputs(tmp_path / "in", files=2)
    res = run(text_converter(inputs, text_tokenizer), url, text_tokenizer)
    assert res.complete
    assert [u["Key"] for u in _uploads(fs, "uploads")] == ["other/shard-00000-000.arrow"]
