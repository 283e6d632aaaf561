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
    for name in ("cartpole", "pendulum", "babyai", "pixels", "digits", "text"):
        assert (out / "shards" / name / "manifest.json").is_file()
    # the pixel task is in the default demo, trained in the same model and acted on held-out seeds
    pixels = control["MiniGrid-pixels"]
    assert pixels["seeds"][0] >= 100 and 0.0 <= pixels["success"]["agent"] <= 1.0
    assert results["size"]["weights"]["pixels"] > 0
    assert (out / "loss.png").stat().st_size > 1000
    assert results["captions"]["n"] > 0 and 0.0 <= results["captions"]["accuracy"] <= 1.0
    assert "demonstrations" in proc.stdout and "random policy" in proc.stdout


def test_babyai_table_converts_and_acting_sees_the_same_tokens(tmp_path, sp_model_path, monkeypatch):
    """BabyAIBot episodes -> Parquet episode table -> gato-tokenize rl; the agent acting in the same
    environment builds each step's observation exactly as the converter wrote it."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import demo_data
    import demo_envs

    from converters.cli import main as tokenize_main
    from trainer.acting.envs import make_env_fn
    from trainer.acting.rollout import Agent, load_demonstrations

    cols, returns = demo_data.record_babyai(6, seed=3)
    assert (returns > 0).all()  # the bot reaches the object
    table = demo_data.write_episode_table(tmp_path / "babyai.parquet", cols)
    assert tokenize_main(["rl", str(table), "--out", str(tmp_path / "shards"), "--text-tokenizer", sp_model_path,
                          "--no-progress"]) == 0
    demos = load_demonstrations(tmp_path / "shards")
    assert {f.name: f.kind for f in demos.spec.observations} == {
        "obs/image": "image", "obs/direction": "discrete", "obs/mission": "text"}
    env = make_env_fn("demo_envs:" + demo_envs.ENV_ID)()
    agent = Agent(None, demos.layout, demos.spec, 256, text_tokenizer=demos.text_tokenizer)
    for ep in range(6):
        obs, _ = env.reset(seed=3 + ep)
        row = demos.rows[ep]
        current = agent.observe(obs)
        np.testing.assert_array_equal(current.tokens, row.tokens[:len(current)])
        np.testing.assert_array_equal(current.patches, row.patches[:len(current.patches)])
    env.close()


def test_babyai_greedy_actions_same_with_and_without_cache(monkeypatch, sp_model_path):
    """Missions of different token lengths side by side (rows of different widths in each chunk)."""
    missions = set()
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import demo_envs

    from tokenizer_kit.sequence import EpisodeSpec, FieldSpec
    from tokenizer_kit.text import TextTokenizer
    from trainer.acting.envs import make_env_fn
    from trainer.model import GatoConfig, GatoModel
    from trainer.acting.rollout import Agent, run_episodes

    spec = EpisodeSpec((FieldSpec("obs/image", "image", (16, 16)), FieldSpec("obs/direction", "discrete", ()),
                        FieldSpec("obs/mission", "text", None)), (FieldSpec("action", "discrete", ()),))
    tok = TextTokenizer(sp_model_path)
    layout = tok.layout()
    torch.manual_seed(0)
    model = GatoModel(GatoConfig.from_preset("tiny", layout, n_layer=2, d_model=64, d_ff=128)).eval()
    with torch.no_grad():
        model.embed.weight.mul_(20.0)
    outcomes = []
    for cache in (True, False):
        agent = Agent(model, layout, spec, seq_len=96, text_tokenizer=tok, cache=cache)
        results = run_episodes(agent, make_env_fn("demo_envs:" + demo_envs.ENV_ID), 3, [], 0, "none", max_steps=12)
        outcomes.append([(r.ret, r.steps) for r in results])
    assert outcomes[0] == outcomes[1]
    env = make_env_fn("demo_envs:" + demo_envs.ENV_ID)()
    for seed in range(3):  # run_episodes resets episode i with seed i: their missions differ in length
        missions.add(len(tok.encode(env.reset(seed=seed)[0]["mission"])))
    assert len(missions) > 1
