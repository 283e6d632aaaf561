"""The built-in demo, shortened: real data -> shards -> a trained model that beats a random policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_demo_agent_beats_random_policy(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    control = {r["task"]: r for r in results["control"]}
    cart = control["CartPole-v1"]
    # the scripted expert's demonstrations are near-perfect; a random policy lasts ~20 steps
    assert np.mean(cart["demonstrations"]) > 400
    assert np.mean(cart["agent"]) > 2 * np.mean(cart["random"]) + 20, cart
    # every stage really ran: shards, a loss curve, captions of held-out digits
    for name in ("cartpole", "pendulum", "digits", "text"):
        assert (out / "shards" / name / "manifest.json").is_file()
    assert (out / "loss.png").stat().st_size > 1000
    assert results["captions"]["n"] > 0 and 0.0 <= results["captions"]["accuracy"] <= 1.0
    assert "demonstrations" in proc.stdout and "random policy" in proc.stdout
