"""`gato-tokenize rl|captions|text`: exit codes 0/1/2, one-line errors, partitions and a real kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from converters.cli import main
from schemas.manifest import Manifest

REPO = Path(__file__).resolve().parents[2]


def write_docs(directory: Path, files: int = 4, docs: int = 20) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(files):
        p = directory / f"f{f}.txt"
        p.write_text("\n\n".join(f"document {d} of file {f}: the robot arm grasps a cube " * (1 + d % 4)
                                 for d in range(docs)) + "\n")
        paths.append(str(p))
    return paths


def text_cmd(inputs, out, sp_model_path, *extra) -> list[str]:
    return ["text", *inputs, "--out", str(out), "--text-tokenizer", sp_model_path, "--split", "blank-line",
            "--no-progress", *extra]


def shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.arrow"))}


def test_text_conversion_exits_0_with_a_summary(tmp_path, sp_model_path, capsys):
    inputs = write_docs(tmp_path / "in")
    assert main(text_cmd(inputs, tmp_path / "out", sp_model_path, "--shard-size", "8KB", "--task", "docs")) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("text: 80 rows, ") and str(tmp_path / "out") in err[-1]
    m = Manifest.read(tmp_path / "out")
    assert m.total_rows == 80 and len(m.shards) > 1 and m.tasks == ["docs"]
    assert m.stats["conversion"]["shard_size"] == 8000
    # running it again changes nothing and says so
    assert main(text_cmd(inputs, tmp_path / "out", sp_model_path, "--shard-size", "8KB", "--task", "docs")) == 0
    again = capsys.readouterr().err.strip()
    assert again.startswith("up to date: text: 80 rows") and "tok/s" not in again  # nothing was converted


@pytest.mark.parametrize("args", [
    ["text", "x.txt", "--text-tokenizer", "m.model"],  # no --out
    ["text", "x.txt", "--out", "o"],  # text needs --text-tokenizer
    ["text", "x.txt", "--out", "o", "--text-tokenizer", "m.model", "--partition", "1"],
    ["text", "x.txt", "--out", "o", "--text-tokenizer", "m.model", "--num-partitions", "2"],
    ["text", "x.txt", "--out", "o", "--text-tokenizer", "m.model", "--num-partitions", "2", "--partition", "2"],
    ["text", "x.txt", "--out", "o", "--text-tokenizer", "m.model", "--shard-size", "lots"],
    ["text", "x.txt", "--out", "o", "--text-tokenizer", "m.model", "--workers", "0"],
    ["text", "x.txt", "--out", "o", "--text-tokenizer", "m.model", "--on-error", "ignore"],
    ["text", "x.txt", "--out", "o", "--text-tokenizer", "m.model", "--split", "sentence"],
])
def test_bad_usage_exits_2(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_out_holding_another_conversion_is_bad_usage(tmp_path, sp_model_path, capsys):
    inputs = write_docs(tmp_path / "in", files=1, docs=3)
    assert main(text_cmd(inputs, tmp_path / "out", sp_model_path)) == 0
    with pytest.raises(SystemExit) as e:
        main(text_cmd(inputs, tmp_path / "out", sp_model_path, "--shard-size", "1MB"))
    assert e.value.code == 2 and "already holds a finished conversion" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as e:
        main(text_cmd(inputs, tmp_path / "file", sp_model_path))
    assert e.value.code == 2


def test_bad_data_exits_1_with_one_line_and_nothing_written(tmp_path, sp_model_path, capsys):
    inputs = write_docs(tmp_path / "in", files=2, docs=3)
    bad = tmp_path / "in" / "z.txt"
    bad.write_bytes(b"good\n\nstill good\n\nbad \xff\xfe here\n")
    out = tmp_path / "out"
    assert main(text_cmd(inputs + [str(bad)], out, sp_model_path)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{bad}: line 5 (byte 22): not UTF-8 text" in err
    assert not (out / "manifest.json").exists() and not list(out.rglob("*tmp*"))
    assert len(list(out.glob("shard-*"))) == len(list(out.glob(".work/unit-*.json"))) == 2  # the good units
    # --on-error skip: the same input converts and the record is listed
    assert main(text_cmd(inputs + [str(bad)], out, sp_model_path, "--on-error", "skip")) == 0
    m = Manifest.read(out)
    assert m.total_rows == 8 and m.skipped[0]["source"] == f"{bad}@18"
    # a missing input and a file that is not a SentencePiece model
    assert main(text_cmd([str(tmp_path / "nope.txt")], tmp_path / "o2", sp_model_path)) == 1
    assert "input not found" in capsys.readouterr().err
    assert main(text_cmd(inputs, tmp_path / "o3", str(bad))) == 1
    assert "not a SentencePiece model" in capsys.readouterr().err


def test_partitions_then_plain_run(tmp_path, sp_model_path, capsys):
    inputs = write_docs(tmp_path / "in")
    assert main(text_cmd(inputs, tmp_path / "single", sp_model_path, "--shard-size", "8KB")) == 0
    out = tmp_path / "out"
    for i in range(2):
        assert main(text_cmd(inputs, out, sp_model_path, "--shard-size", "8KB", "--num-partitions", "2",
                             "--partition", str(i))) == 0
        assert f"gato-tokenize finalize {out}" in capsys.readouterr().err
        assert not (out / "manifest.json").exists()
    assert main(["finalize", str(out)]) == 0
    assert shards(out) == shards(tmp_path / "single")
    assert main(text_cmd(inputs, out, sp_model_path, "--shard-size", "8KB")) == 0
    assert "up to date" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_shards(tmp_path, sp_model_path):
    """A real SIGKILL in the middle of a two-worker run; the re-run ends with the uninterrupted shards."""
    inputs = write_docs(tmp_path / "in", files=40, docs=200)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "converters.cli", *text_cmd(inputs, tmp_path / "out", sp_model_path,
                                                             "--shard-size", "200KB", "--workers", "2")]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    work = tmp_path / "out" / ".work"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(work.glob("*.json"))) < 3:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its workers, mid-way
    proc.wait()
    done = len(list(work.glob("*.json")))
    assert 3 <= done < 40, "the run was not killed mid-way"
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert main(text_cmd(inputs, tmp_path / "out", sp_model_path, "--shard-size", "200KB")) == 0
    assert main(text_cmd(inputs, tmp_path / "ref", sp_model_path, "--shard-size", "200KB")) == 0
    assert shards(tmp_path / "out") == shards(tmp_path / "ref")
    assert not (tmp_path / "out" / ".work").exists()
