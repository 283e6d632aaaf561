"""MuJoCo's warnings do not land in the working directory (the repo root under `make test`)."""

from __future__ import annotations

import gymnasium as gym
import pytest


def test_a_warning_model_leaves_no_mujoco_log(tmp_path, monkeypatch):
    pytest.importorskip("mujoco")
    monkeypatch.chdir(tmp_path)
    gym.make("HalfCheetah-v5").close()  # its XML uses the deprecated `settotalmass`: MuJoCo warns at load
    assert list(tmp_path.iterdir()) == []
