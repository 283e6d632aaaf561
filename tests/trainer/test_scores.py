"""Scores as rliable reports them: the aggregates and stratified-bootstrap intervals of
trainer/acting/scores.py against rliable's own code, per-task intervals, several runs (checkpoints or
eval.json files), and evaluation seeds kept apart from the seeds the data was recorded on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.shards import cartpole_episodes, write_shard_dir
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec
from tokenizer_kit.text import TextTokenizer
from trainer.acting import scores as S
from trainer.cli import main

CARTPOLE = EpisodeSpec((FieldSpec("obs", "continuous", (4,)),), (FieldSpec("action", "discrete", ()),))


def rliable_intervals(x: np.ndarray, fn, reps: int) -> np.ndarray:
    """rliable's StratifiedBootstrap (its resampling, `update_indices`) and arch's percentile
    interval. rliable 1.2 passes `random_state=` to arch's IIDBootstrap, which arch 8 (the first
    that imports with pandas 3) no longer takes: its constructor is repeated here without it."""
    import arch.bootstrap as arch_bs
    from rliable import library as rly

    class Stratified(rly.StratifiedBootstrap):
        def __init__(self, *args):
            arch_bs.IIDBootstrap.__init__(self, *args)
            self._args_shape = args[0].shape
            self._num_tasks = self._args_shape[1]
            self._parameters = [self._num_tasks, False]
            self._task_bootstrap = False
            self._strata_indices = self._get_strata_indices()

    np.random.seed(0)  # rliable draws its indices from numpy's global generator
    return Stratified(x).conf_int(fn, reps=reps, method="percentile", size=0.95)


def test_aggregates_match_rliable():
    metrics = pytest.importorskip("rliable.metrics")
    rng = np.random.default_rng(3)
    x = np.clip(rng.normal([0.2, 0.9, 0.5, 1.3], 0.25, (5, 4)), -0.5, 2.0)  # 5 runs x 4 tasks
    ours = S.aggregates(x, reps=20000, seed=1)
    theirs = {"mean": metrics.aggregate_mean, "median": metrics.aggregate_median, "iqm": metrics.aggregate_iqm,
              "optimality_gap": metrics.aggregate_optimality_gap}
    for name, fn in theirs.items():
        assert getattr(ours, name) == pytest.approx(float(fn(x)), abs=1e-12), name
    ci = rliable_intervals(x, lambda s: np.array([fn(s) for fn in theirs.values()]), reps=20000)
    for k, name in enumerate(theirs):  # two independent 20,000-draw bootstraps: equal to sampling noise
        assert getattr(ours, name + "_ci") == pytest.approx([ci[0, k], ci[1, k]], abs=0.02), name
    assert ours.runs == 5 and ours.tasks == 4


def test_hand_computed_case():
    x = np.array([[0.0, 1.0, 2.0, 0.5],
                  [1.0, 1.0, 0.0, 0.5]])
    a = S.aggregates(x, reps=200)
    assert a.mean == pytest.approx(6.0 / 8)
    assert a.median == pytest.approx(np.median([0.5, 1.0, 1.0, 0.5]))  # of the per-task means
    assert a.iqm == pytest.approx(np.mean([0.5, 0.5, 1.0, 1.0]))  # sorted 0 0 .5 .5 1 1 1 2, 2 cut each end
    assert a.optimality_gap == pytest.approx(1 - np.mean([0, 1, 1, .5, 1, 1, 0, .5]))
    one = S.aggregates(x[:1], reps=200)  # one run: nothing to resample, no spread
    assert one.mean_ci == [one.mean, one.mean] and one.runs == 1
    # each task weighs the same: a task's episode count does not enter the matrix
    ci, over = S.task_interval(np.array([0.5]), [np.array([0.0, 1.0, 0.0, 1.0])], reps=2000)
    assert over == "episodes" and ci[0] < 0.5 < ci[1]
    ci, over = S.task_interval(np.array([0.4, 0.6, 0.5]), [np.zeros(3)] * 3, reps=2000)
    assert over == "runs" and 0.4 <= ci[0] < 0.5 < ci[1] <= 0.6


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sp_model_path):
    root = tmp_path_factory.mktemp("scores")
    layout = TextTokenizer(sp_model_path).layout()
    rows, rets = cartpole_episodes(layout, 8)
    data = write_shard_dir(root / "cartpole", rows, [f"cp-{i}" for i in range(8)], layout, "rl", "cartpole",
                           rows_per_shard=8, episode_spec=CARTPOLE, returns=rets, tokenizer_path=sp_model_path)
    out = []
    for seed in (0, 1):
        run = root / f"run{seed}"
        assert main(["--data", str(data), "--out", str(run), "--steps", "3", "--batch-size", "2", "--seq-len", "48",
                     "--seed", str(seed), "--no-progress"]) == 0
        out.append(run)
    suite = root / "suite.yaml"
    suite.write_text(f"tasks:\n  - env: CartPole-v1\n    data: {data}\n    episodes: 2\n    max_steps: 12\n"
                     f"    seed: 500\n    recorded_seeds: 0-99\n"
                     f"  - env: CartPole-v1\n    name: short\n    data: {data}\n    episodes: 3\n    max_steps: 6\n")
    return {"runs": out, "suite": suite, "data": data, "root": root}


def test_several_checkpoints_are_runs_and_eval_json_files_combine_to_the_same(runs, tmp_path, capsys):
    a, b = runs["runs"]
    assert main(["eval", "--checkpoint", str(a), str(b), "--suite", str(runs["suite"]), "--out",
                 str(tmp_path / "ab"), "--seed", "1000"]) == 0
    both = json.loads((tmp_path / "ab" / "eval.json").read_text())
    assert both["overall"]["runs"] == 2 and both["overall"]["tasks"] == 2 and len(both["results"]) == 2
    first, second = both["tasks"]
    assert first["seeds"] == [500, 501] and second["seeds"] == [1000, 1001, 1002]  # recorded per task
    assert first["ci_over"] == "runs" and len(first["run_scores"]) == 2
    assert first["score"] == pytest.approx(np.mean(first["run_scores"]))
    printed = capsys.readouterr().out
    assert "optimality gap" in printed and "2 run(s)" in printed
    for run, name in ((a, "a"), (b, "b")):
        assert main(["eval", "--checkpoint", str(run), "--suite", str(runs["suite"]), "--out", str(tmp_path / name),
                     "--seed", "1000"]) == 0
    one = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert one["overall"]["runs"] == 1 and one["tasks"][0]["ci_over"] == "episodes"
    assert main(["eval", "--results", str(tmp_path / "a" / "eval.json"), str(tmp_path / "b" / "eval.json"),
                 "--out", str(tmp_path / "combined"), "--seed", "1000"]) == 0
    combined = json.loads((tmp_path / "combined" / "eval.json").read_text())
    for k in ("mean", "median", "iqm", "optimality_gap"):  # greedy acting from the same seeds: the same runs
        assert combined["overall"][k] == pytest.approx(both["overall"][k]), k
        assert combined["overall"][k + "_ci"] == pytest.approx(both["overall"][k + "_ci"]), k
    assert (tmp_path / "combined" / "eval.png").stat().st_size > 1000


def test_evaluating_on_a_recorded_seed_is_refused_before_acting(runs, tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(f"tasks:\n  - env: CartPole-v1\n    data: {runs['data']}\n    episodes: 3\n"
                     f"    recorded_seeds: 0-99\n")
    assert main(["eval", "--checkpoint", str(runs["runs"][0]), "--suite", str(suite), "--out", str(tmp_path / "o"),
                 "--seed", "98"]) == 1
    err = capsys.readouterr().err
    assert "include 2 the demonstrations were recorded on (first 98)" in err and not (tmp_path / "o").exists()


def test_eval_needs_a_checkpoint_and_suite_or_results(runs):
    for argv in (["eval", "--suite", str(runs["suite"])], ["eval", "--checkpoint", str(runs["runs"][0])],
                 ["eval", "--results", "x.json", "--checkpoint", str(runs["runs"][0])]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2


def test_unreadable_or_mismatched_eval_json_is_one_line(runs, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["eval", "--results", str(bad)]) == 1
    assert "not an eval.json" in capsys.readouterr().err
    a = {"runs": ["a"], "tasks": [{"name": "t1", "env": "e", "agent": [1.0], "random": [0.0], "expert": [2.0],
                                   "expert_exact": True, "horizon": 5}]}
    b = {"runs": ["b"], "tasks": [dict(a["tasks"][0], name="t2")]}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main(["eval", "--results", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "need the same tasks" in err
