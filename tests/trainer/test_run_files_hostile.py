"""A run directory's own files after a crash or an edit (issue 20): a metrics.jsonl whose last line
was cut off resumes (the cut line is dropped and logged again); any other bad line stops with one
line, exit 1, no traceback."""

from __future__ import annotations

import json

import pytest

from test_train import _args, _metrics, data_dirs  # noqa: F401 (data_dirs: the fixture)
from trainer.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_cut_off_last_metrics_line_resumes(data_dirs, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    assert main(_args(data_dirs, run, "--steps", "2", "--log-every", "1", "--save-every", "2")) == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2')  # the crash came mid-write
    assert main(_args(data_dirs, run, "--steps", "3", "--log-every", "1", "--save-every", "2")) == 0
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3]
    assert "Traceback" not in capsys.readouterr().err


def test_a_bad_metrics_line_in_the_middle_is_one_line_exit_1(data_dirs, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    assert main(_args(data_dirs, run, "--steps", "2", "--log-every", "1", "--save-every", "2")) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "garbage{", *lines[1:]]) + "\n")
    capsys.readouterr()
    assert main(_args(data_dirs, run, "--steps", "3", "--log-every", "1")) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "metrics.jsonl: line 2" in err[0]
