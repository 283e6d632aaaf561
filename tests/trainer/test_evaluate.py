"""Acting and generating from a trained run through the command line: eval suites, rollout,
generate, caption, environments from plugins, fine-tuning, and what a run reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.shards import cartpole_episodes, make_caption_shard_dir, make_text_shard_dir, write_shard_dir
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec
from tokenizer_kit.text import TextTokenizer
from trainer.cli import main
from trainer.acting.eval_report import TaskResult
from trainer.acting.suite import read_suite
from trainer.acting.rollout import load_demonstrations

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CARTPOLE = EpisodeSpec((FieldSpec("obs", "continuous", (4,)),), (FieldSpec("action", "discrete", ()),))


def _cartpole_dir(out: Path, sp_model_path: str, episodes: int = 16) -> Path:
    """CartPole episodes of a balancing rule, capped at 60 steps (the env's own horizon is 500)."""
    layout = TextTokenizer(sp_model_path).layout()
    rows, rets = cartpole_episodes(layout, episodes)
    return write_shard_dir(out, rows, [f"cp-{i}" for i in range(episodes)], layout, "rl", "cartpole",
                           rows_per_shard=8, episode_spec=CARTPOLE, returns=rets, tokenizer_path=sp_model_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sp_model_path, corpus_path):
    root = tmp_path_factory.mktemp("acting")
    dirs = {"cartpole": _cartpole_dir(root / "cartpole", sp_model_path),
            "digits": make_caption_shard_dir(root / "digits", sp_model_path, pairs=8),
            "text": make_text_shard_dir(root / "text", sp_model_path, corpus_path, docs=20)}
    run = root / "run"
    assert main(["--data", *map(str, dirs.values()), "--out", str(run), "--steps", "12", "--batch-size", "4",
                 "--seq-len", "64", "--log-every", "4", "--no-progress"]) == 0
    return {"run": run, "root": root, **dirs}


def test_run_ends_with_a_summary_and_says_when_it_resumes(trained, tmp_path, capsys, sp_model_path):
    run = tmp_path / "run"
    args = ["--data", str(trained["cartpole"]), str(trained["text"]), "--out", str(run), "--batch-size", "2",
            "--seq-len", "32", "--log-every", "2", "--no-progress"]
    assert main(args + ["--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 steps" in out and "cartpole" in out and "corpus" in out and str(run / "checkpoint.pt") in out
    assert main(args + ["--steps", "6"]) == 0
    captured = capsys.readouterr()
    assert "resumed from step 4 of 6" in captured.err and "6 steps" in captured.out
    assert (run / "loss.png").stat().st_size > 1000


def test_init_from_starts_a_new_run_from_the_weights(trained, tmp_path):
    from trainer.checkpoint import read_checkpoint

    run = tmp_path / "fine"
    assert main(["--data", str(trained["cartpole"]), "--out", str(run), "--init-from", str(trained["run"]),
                 "--steps", "1", "--lr", "1e-9", "--warmup", "0", "--seq-len", "32", "--batch-size", "2",
                 "--no-progress"]) == 0
    src, new = read_checkpoint(trained["run"]), read_checkpoint(run)
    assert new["step"] == 1
    for k, v in src["model"].items():  # one step at lr 1e-9: the source weights, not a fresh init
        torch.testing.assert_close(new["model"][k], v, atol=1e-6, rtol=0)
    assert new["config"]["seq_len"] == 32


def test_eval_suite_writes_scores_against_random_and_expert(trained, tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"tasks:\n  - env: CartPole-v1\n    data: {trained['cartpole']}\n    episodes: 3\n"
                     f"    max_steps: 40\n    success: 30\n"
                     f"  - env: CartPole-v1\n    name: cartpole-short\n    data: {trained['cartpole']}\n"
                     f"    episodes: 2\n    max_steps: 20\n")
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(trained["run"]), "--suite", str(suite), "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert (out / "eval.png").stat().st_size > 1000
    first, second = report["tasks"]
    assert len(first["agent"]) == 3 and len(first["random"]) == 3 and first["horizon"] == 40
    assert max(first["agent"]) <= 40 and max(second["agent"]) <= 20  # CartPole: 1 a step, cut at the horizon
    # the expert over the same horizon: 60-step demonstrations scaled to 20 steps, never compared whole
    assert max(second["expert"]) <= 20 + 1e-9 and not second["expert_exact"]
    lo, hi = np.mean(first["random"]), np.mean(first["expert"])
    assert first["score"] == pytest.approx((np.mean(first["agent"]) - lo) / (hi - lo))
    assert set(first["success_rates"]) == {"agent", "random", "expert"}
    ov = report["overall"]
    assert ov["tasks"] == 2 and ov["episodes"] == 5 and ov["iqm_ci"][0] <= ov["iqm"] <= ov["iqm_ci"][1]
    printed = capsys.readouterr().out
    assert "IQM" in printed and "cartpole-short" in printed


def test_rollout_is_the_one_task_form(trained, capsys):
    assert main(["rollout", "--checkpoint", str(trained["run"]), "--data", str(trained["cartpole"]),
                 "--env", "CartPole-v1", "--episodes", "2", "--max-steps", "15"]) == 0
    out = capsys.readouterr().out
    assert "CartPole-v1" in out and "normalised score" in out


def test_unknown_env_is_one_line_naming_what_was_tried(trained, capsys):
    assert main(["rollout", "--checkpoint", str(trained["run"]), "--data", str(trained["cartpole"]),
                 "--env", "NoSuchGame-v3", "--episodes", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NoSuchGame-v3" in err and "minigrid" in err and "ale_py" in err


def test_plugin_ids_resolve_as_typed():
    from trainer.acting.envs import make_env_fn

    for env_id in ("ALE/Pong-v5", "BabyAI-GoToLocal-v0"):
        env = make_env_fn(env_id)()
        env.reset(seed=0)
        env.close()


def test_bad_suite_is_one_line(tmp_path):
    from trainer.acting.suite import SuiteError

    bad = tmp_path / "s.yaml"
    bad.write_text("tasks:\n  - env: CartPole-v1\n    data: x\n    episdoes: 3\n")
    with pytest.raises(SuiteError, match="unknown field 'episdoes'"):
        read_suite(bad)
    bad.write_text("tasks: []\n")
    with pytest.raises(SuiteError, match="non-empty"):
        read_suite(bad)


def test_generate_and_caption(trained, tmp_path, capsys):
    from PIL import Image

    assert main(["generate", "--checkpoint", str(trained["run"]), "--prompt", "The", "--max-new-tokens", "5",
                 "--temperature", "0.8", "--top-k", "20"]) == 0
    assert capsys.readouterr().out.startswith("The")
    img = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(img)
    assert main(["caption", "--checkpoint", str(trained["run"]), str(img), "--image-size", "32",
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith(str(img) + "\t")
    assert main(["caption", "--checkpoint", str(trained["run"]), str(tmp_path / "missing.png")]) == 1


def test_task_score():
    r = TaskResult("t", "e", agent=[5.0, 7.0], random=[1.0, 1.0], expert=[9.0, 9.0], expert_exact=True, horizon=10)
    assert r.score == pytest.approx(0.625)


def test_demonstration_returns_within_a_horizon(trained):
    demos = load_demonstrations(trained["cartpole"])
    full, exact = demos.returns_within(None)
    assert exact and (full == demos.returns).all()
    cut, exact = demos.returns_within(10)
    assert not exact and cut.max() <= 10 + 1e-9


def test_wrappers_recorded_in_the_manifest_are_applied_again():
    from schemas.manifest import Manifest
    from tokenizer_kit.frames import FrameStack
    from tokenizer_kit.layout import VocabLayout
    from tokenizer_kit.sequence import EpisodeSpec, FieldSpec
    from trainer.acting.envs import EnvWrappers, make_env_fn

    def manifest(spec: EpisodeSpec | None) -> Manifest:
        return Manifest(VocabLayout(text_vocab_size=100).to_dict(), "rl", episode_spec=spec.to_dict() if spec else None)

    assert EnvWrappers.from_manifest(manifest(None)) == EnvWrappers(False, 1)
    spec = EpisodeSpec((FieldSpec("obs", "image", (84, 84), frame_stack=FrameStack(3, "first", 84, 84)),),
                       (FieldSpec("act", "continuous", (1,), mu_law=False, bounds=((-2.0,), (2.0,))),))
    recorded = EnvWrappers.from_manifest(manifest(spec))
    assert recorded == EnvWrappers(False, 3)  # bounds are mapped back by the agent, not by a wrapper
    env = make_env_fn("Pendulum-v1", wrappers=recorded)()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 3) and env.action_space.low[0] == -2.0  # stacked; actions in the env's units
    env.close()
