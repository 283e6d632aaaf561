"""gato-train usage errors exit 2 before anything is read."""

from __future__ import annotations

import pytest

from trainer.cli import main


@pytest.mark.parametrize("weight", ["-1", "0", "nan", "inf"])
def test_a_bad_mixture_weight_is_bad_usage(tmp_path, weight, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--data", f"{tmp_path}:{weight}", "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    assert "weight must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
