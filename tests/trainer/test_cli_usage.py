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


@pytest.mark.parametrize("share", ["1", "1.5", "-0.1"])
def test_an_action_noise_outside_0_1_is_bad_usage(tmp_path, share, capsys):
    code = None
    try:
        code = main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--action-noise", share])
    except SystemExit as e:  # argparse's own range check
        code = e.code
    assert code == 2
    assert "action-noise" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
