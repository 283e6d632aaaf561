"""The gato-train tracebacks of issue 20, each now one line with exit 1 (bad data or run
directory) or 2 (bad usage), run as the real CLI in a child process with its address space capped
(and, for the full disk, its file sizes: RLIMIT_FSIZE makes the checkpoint write fail with EFBIG)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.hostile_run import GiB, check_one_line, run
from tests.support.loader_data import make_text_dir
from tokenizer_kit.layout import VocabLayout

LAYOUT = VocabLayout(text_vocab_size=32000, eos_id=2)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return make_text_dir(tmp_path_factory.mktemp("usage") / "text", LAYOUT, docs=20, rows_per_shard=6)


def _train(text_dir, sandbox: Path, *argv: str, **kw):
    return run("trainer.cli", ["--data", str(text_dir), "--preset", "tiny", "--steps", "2", "--batch-size", "2",
                               "--seq-len", "32", "--no-progress", *argv], sandbox, mem=kw.pop("mem", 4 * GiB), **kw)


def test_out_that_is_a_file_or_a_dangling_symlink(text_dir, tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    (box / "afile").write_text("not a run")
    (box / "dangling").symlink_to(tmp_path / "nowhere" / "x")
    check_one_line(_train(text_dir, box, "--out", "afile"), 2, "afile", "not a directory")
    check_one_line(_train(text_dir, box, "--out", "dangling"), 2, "dangling symlink")
    assert (box / "afile").read_text() == "not a run" and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("argv,needle", [(["--lr", "1e300"], "--lr"), (["--lr", "inf"], "--lr"),
                                         (["--device", "bogus"], "not a device"),
                                         (["--seq-len", "1e6"], "--seq-len"),
                                         (["--seq-len", "1000000"], "GiB for the logits")])
def test_bad_usage_is_one_line_exit_2_before_anything_is_allocated(argv, needle, text_dir, tmp_path):
    r = _train(text_dir, tmp_path / "box", "--out", "run", *argv, mem=3 * GiB)
    check_one_line(r, 2, needle)
    assert not (tmp_path / "box" / "run" / "checkpoint.pt").exists()


def test_cuda_where_there_is_none_is_bad_usage(text_dir, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    check_one_line(_train(text_dir, tmp_path / "box", "--out", "run", "--device", "cuda"), 2, "CUDA is not available")


def test_a_full_disk_during_the_checkpoint_write_is_one_line(text_dir, tmp_path):
    r = _train(text_dir, tmp_path / "box", "--out", "run", fsize=256 * 1024)
    check_one_line(r, 1, "checkpoint")
    run_dir = tmp_path / "box" / "run"
    assert not (run_dir / "checkpoint.pt").exists()
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".") or ".tmp" in p.name]


def test_an_env_module_that_cannot_be_imported_is_one_line():
    from trainer.acting.envs import UnknownEnvError, make_env_fn
    with pytest.raises(UnknownEnvError, match="cannot be imported") as e:
        make_env_fn("no_such_plugin_module_x:Foo-v0")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("body,needle", [("tasks:\n  - env: 5\n    data: d\n", "field 'env' is int"),
                                         ("tasks:\n  - env: CartPole-v1\n    data: [1, 2]\n", "field 'data' is list"),
                                         ("tasks:\n  - env: CartPole-v1\n    data: d\n    episodes: abc\n",
                                          "field 'episodes' is str"),
                                         ("tasks:\n  - env: CartPole-v1\n    data: d\n    episodes: true\n",
                                          "field 'episodes' is bool"),
                                         ("tasks:\n  - env: CartPole-v1\n    data: d\n    rescale_actions: 1\n",
                                          "field 'rescale_actions' is int")])
def test_wrong_types_in_a_suite_are_one_line(body, needle, tmp_path):
    from trainer.acting.suite import SuiteError, read_suite
    (tmp_path / "s.yaml").write_text(body)
    with pytest.raises(SuiteError, match=needle):
        read_suite(tmp_path / "s.yaml")


