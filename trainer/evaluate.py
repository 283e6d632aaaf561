"""Evaluating a checkpoint as a policy: a suite of tasks, each scored against random and expert play.

    gato-train eval --checkpoint RUN --suite suite.yaml
    gato-train rollout --checkpoint RUN --data SHARD_DIR --env CartPole-v1 --episodes 10

A suite (YAML) lists tasks:

    tasks:
      - env: CartPole-v1          # any id an installed package registers
        data: shards/cartpole     # RL shard directory: EpisodeSpec, prompts, the expert's return
        episodes: 20
        max_steps: 500            # optional; the horizon of agent, random and expert alike
        success: 0                # optional: an episode whose return exceeds this succeeded

For each task: the agent's return, a uniformly random policy's and the expert's (the
demonstrations') over the same horizon, and the expert-normalised score
(agent - random) / (expert - random). Across tasks: the mean and the interquartile mean (IQM) of
the per-episode normalised scores, each with a stratified bootstrap 95% confidence interval, as
rliable (Agarwal et al. 2021) reports them. `rollout` is the one-task form of the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from tokenizer_kit.files import atomic_path

from .devices import device_arg
from .envs import EnvWrappers, make_env_fn
from .rollout import PROMPT_MODES, Agent, load_demonstrations, run_episodes

EVAL_JSON, EVAL_PNG = "eval.json", "eval.png"


class SuiteError(ValueError):
    """A suite file that cannot be read or names a bad task: one line, exit 1."""


@dataclass
class TaskSpec:
    """One task of a suite."""

    env: str
    data: str
    name: str = ""
    task: str | None = None  # the task inside `data` when it holds several
    episodes: int = 10
    max_steps: int | None = None
    success: float | None = None  # return above which an episode counts as a success
    prompt: str = "end"
    rescale_actions: bool = False  # when the manifest does not say how actions were recorded
    expert_return: float | None = None  # the expert's mean return over the horizon, when the
    # demonstrations are not the expert's own play (e.g. recorded with perturbations)

    def __post_init__(self):
        self.name = self.name or self.env
        if self.episodes < 1:
            raise SuiteError(f"task {self.name}: episodes must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise SuiteError(f"task {self.name}: max_steps must be at least 1")
        if self.prompt not in PROMPT_MODES:
            raise SuiteError(f"task {self.name}: prompt must be one of {', '.join(PROMPT_MODES)}")


_FIELD_TYPES = {"str": (str,), "str | None": (str, type(None)), "int": (int,), "int | None": (int, type(None)),
                "float | None": (int, float, type(None)), "bool": (bool,)}  # TaskSpec's annotations


def read_suite(path: str | os.PathLike) -> list[TaskSpec]:
    """The tasks of a suite file; relative data paths are relative to the file."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SuiteError(f"{path}: unreadable suite ({str(e).splitlines()[0]})") from None
    items = doc.get("tasks") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise SuiteError(f"{path}: a suite needs a non-empty list 'tasks'")
    known = set(TaskSpec.__dataclass_fields__)
    tasks = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "env" not in item or "data" not in item:
            raise SuiteError(f"{path}: task {i} needs 'env' and 'data'")
        unknown = sorted(set(item) - known)
        if unknown:
            raise SuiteError(f"{path}: task {i} has unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
        for key, value in item.items():  # a suite is data: each field of its type, or one line naming it
            want = _FIELD_TYPES[TaskSpec.__dataclass_fields__[key].type]
            if isinstance(value, bool) and bool not in want or not isinstance(value, want):
                raise SuiteError(f"{path}: task {i}: field {key!r} is {type(value).__name__} {value!r}, expected "
                                 f"{TaskSpec.__dataclass_fields__[key].type}")
        item = dict(item)
        item["data"] = str((path.parent / item["data"]) if not os.path.isabs(item["data"]) else item["data"])
        try:
            tasks.append(TaskSpec(**item))
        except TypeError as e:
            raise SuiteError(f"{path}: task {i}: {e}") from None
    return tasks


@dataclass
class TaskResult:
    name: str
    env: str
    agent: list[float]
    random: list[float]
    expert: list[float]  # the demonstrations' returns over the same horizon
    expert_exact: bool  # False: demonstrations longer than the horizon, their returns scaled to it
    horizon: int | None
    agent_steps: list[int] = field(default_factory=list)
    success: float | None = None

    def normalised(self) -> np.ndarray:
        """Per-episode (agent - random) / (expert - random), with the two baselines' means."""
        lo, hi = float(np.mean(self.random)), float(np.mean(self.expert))
        gap = hi - lo if abs(hi - lo) > 1e-9 else 1e-9
        return (np.asarray(self.agent, np.float64) - lo) / gap

    @property
    def score(self) -> float:
        return float(self.normalised().mean())

    def success_rates(self) -> dict | None:
        if self.success is None:
            return None
        return {k: float(np.mean(np.asarray(getattr(self, k)) > self.success)) for k in ("agent", "random", "expert")}


def random_returns(make_env, episodes: int, seed: int = 0, max_steps: int | None = None) -> list[float]:
    """Returns of a uniformly random policy over the same horizon: the floor an agent must beat."""
    out = []
    for i in range(episodes):
        env = make_env()
        env.action_space.seed(seed + i)
        env.reset(seed=seed + i)
        total, done, t = 0.0, False, 0
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            total, t = total + float(r), t + 1
            done = term or trunc or (max_steps is not None and t >= max_steps)
        env.close()
        out.append(total)
    return out


@dataclass
class Policy:
    """A loaded checkpoint and how to act with it."""

    model: torch.nn.Module
    layout: object
    seq_len: int
    prompt_tokens: int
    temperature: float = 0.0
    seed: int = 0
    cache: bool = True


def load_policy(checkpoint, device: str = "cpu", seq_len: int | None = None, prompt_tokens: int | None = None,
                temperature: float = 0.0, seed: int = 0, cache: bool = True) -> Policy:
    from .checkpoint import load_model

    model, layout, config = load_model(checkpoint, map_location=device)
    trained = training_args(checkpoint)
    seq_len = int(seq_len or config.seq_len or (trained.seq_len if trained else 1024))
    prompt = int(prompt_tokens or seq_len // 4)  # as in training (trainer.sampling.SampleConfig)
    return Policy(model, layout, seq_len, prompt, temperature, seed, cache)


def training_args(checkpoint):
    """The options the run was trained with (a typed TrainArgs): its config.json, else the checkpoint's;
    None when neither records them."""
    from .checkpoint import checkpoint_path, read_checkpoint
    from .run_config import CONFIG_NAME, RunRecord, TrainArgs

    run = checkpoint_path(checkpoint).parent
    if (run / CONFIG_NAME).is_file():
        return RunRecord.read(run).train
    saved = read_checkpoint(checkpoint).get("args")
    return TrainArgs.from_dict(saved, f"{checkpoint_path(checkpoint)}: field 'args'") if saved else None


def evaluate_task(policy: Policy, task: TaskSpec, progress: bool = False) -> TaskResult:
    """Play `task.episodes` episodes with the policy, and as many with a random one."""
    demos = load_demonstrations(task.data, task.task)
    demos.layout.check_same(policy.layout, f"shards {task.data}", "checkpoint")
    make_env = make_env_fn(task.env, wrappers=EnvWrappers.from_manifest(demos.manifest, task.rescale_actions))
    agent = Agent(policy.model, policy.layout, demos.spec, policy.seq_len, policy.temperature, demos.text_tokenizer,
                  policy.seed, cache=policy.cache, frame_modes=demos.manifest.frame_modes())
    results = run_episodes(agent, make_env, task.episodes, demos.rows, policy.prompt_tokens, task.prompt,
                           policy.seed, task.max_steps, progress=progress, desc=task.name)
    probe = make_env()
    probe.reset(seed=policy.seed)  # some environments (BabyAI) set their time limit at reset
    # the time limit: gymnasium's TimeLimit, else the environment's own (minigrid's max_steps)
    horizon = task.max_steps or getattr(probe.spec, "max_episode_steps", None) or \
        getattr(probe.unwrapped, "max_steps", None)
    probe.close()
    expert, exact = demos.returns_within(task.max_steps)
    if task.expert_return is not None:
        expert, exact = np.asarray([task.expert_return]), True
    rand = random_returns(make_env, task.episodes, policy.seed, task.max_steps)
    return TaskResult(task.name, task.env, [r.ret for r in results], rand, expert.tolist(), exact, horizon,
                      [r.steps for r in results], task.success)


# --- across tasks -----------------------------------------------------------------------------------

def iqm(x: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of the values (25% trimmed from each end)."""
    x = np.sort(np.asarray(x, np.float64))
    n = len(x)
    cut = int(np.floor(0.25 * n))
    return float(x[cut:n - cut].mean()) if n - 2 * cut > 0 else float(x.mean())


def aggregate(scores: list[np.ndarray], reps: int = 2000, seed: int = 0) -> dict:
    """Mean and IQM of the normalised scores of every episode of every task, each with a stratified
    bootstrap 95% interval (episodes resampled within each task, as rliable does)."""
    rng = np.random.default_rng(seed)
    flat = np.concatenate(scores)
    boot_mean, boot_iqm = np.empty(reps), np.empty(reps)
    for b in range(reps):
        sample = np.concatenate([s[rng.integers(0, len(s), len(s))] for s in scores])
        boot_mean[b], boot_iqm[b] = sample.mean(), iqm(sample)
    return {"mean": float(flat.mean()), "mean_ci": np.percentile(boot_mean, [2.5, 97.5]).tolist(),
            "iqm": iqm(flat), "iqm_ci": np.percentile(boot_iqm, [2.5, 97.5]).tolist(), "tasks": len(scores),
            "episodes": int(len(flat))}


def summary_lines(results: list[TaskResult], overall: dict | None) -> list[str]:
    def f(x) -> str:
        x = np.asarray(x, np.float64)
        return f"{x.mean():9.1f} +/- {x.std():6.1f}"

    lines = [f"{'task':<24}{'horizon':>8}{'agent':>20}{'random':>20}{'expert':>20}{'score':>8}"]
    for r in results:
        star = "" if r.expert_exact else "~"
        lines.append(f"{r.name:<24}{str(r.horizon or '-'):>8}{f(r.agent):>20}{f(r.random):>20}"
                     f"{star + f(r.expert).strip():>20}{r.score:>8.2f}")
        rates = r.success_rates()
        if rates:
            lines.append(f"{'':<24}{'success':>8}{rates['agent']:>20.0%}{rates['random']:>20.0%}{rates['expert']:>20.0%}")
    if any(not r.expert_exact for r in results):
        lines.append("~ demonstrations longer than the horizon: their returns scaled to it")
    if overall:
        lines.append(f"normalised score over {overall['tasks']} task(s), {overall['episodes']} episodes: "
                     f"mean {overall['mean']:.2f} [{overall['mean_ci'][0]:.2f}, {overall['mean_ci'][1]:.2f}], "
                     f"IQM {overall['iqm']:.2f} [{overall['iqm_ci'][0]:.2f}, {overall['iqm_ci'][1]:.2f}] "
                     f"(95% bootstrap CI)")
    return lines


def plot_suite(results: list[TaskResult], overall: dict, path: Path) -> Path:
    """Expert-normalised score per task (with the mean and IQM across tasks) as a bar chart."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in results] + ["mean", "IQM"]
    values = [r.score for r in results] + [overall["mean"], overall["iqm"]]
    errs = [[0.0] * len(results) + [overall["mean"] - overall["mean_ci"][0], overall["iqm"] - overall["iqm_ci"][0]],
            [0.0] * len(results) + [overall["mean_ci"][1] - overall["mean"], overall["iqm_ci"][1] - overall["iqm"]]]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names)), 4))
    ax.bar(names, values, yerr=errs, color=["tab:blue"] * len(results) + ["tab:gray"] * 2, capsize=4)
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="expert")
    ax.axhline(0.0, color="r", lw=0.8, ls=":", label="random")
    ax.set_ylabel("(agent - random) / (expert - random)")
    ax.set_title("expert-normalised score (95% bootstrap CI)")
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def run_suite(policy: Policy, tasks: list[TaskSpec], out: Path | None, progress: bool = True) -> dict:
    """Evaluate every task; write eval.json and eval.png into `out` (when given); return the report."""
    from tqdm import tqdm

    results = []
    for task in tqdm(tasks, desc="tasks", unit="task", disable=not progress or len(tasks) < 2, leave=False):
        results.append(evaluate_task(policy, task, progress))
    overall = aggregate([r.normalised() for r in results], seed=policy.seed)
    report = {"tasks": [asdict(r) | {"score": r.score, "success_rates": r.success_rates()} for r in results],
              "overall": overall}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / EVAL_JSON) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1) + "\n")
        plot_suite(results, overall, out / EVAL_PNG)
    report["lines"] = summary_lines(results, overall)
    return report


# --- command line --------------------------------------------------------------------------------------

def _policy_options(p: argparse.ArgumentParser) -> None:
    from tokenizer_kit.argtypes import nonnegative_float, nonnegative_int, positive_int

    p.add_argument("--checkpoint", required=True, help="training run directory (as written by gato-train --out)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--temperature", type=nonnegative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="context length (default: the training run's --seq-len)")
    p.add_argument("--prompt-tokens", type=positive_int, default=None,
                   help="prompt length (default: the training run's, seq_len / 4)")
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="run the whole context for every token (slow; the cache's reference)")
    p.add_argument("--device", default="cpu", type=device_arg)
    p.add_argument("--threads", type=nonnegative_int, default=0,
                   help="torch CPU threads (default: torch's choice); acting runs small batches, where 1 thread "
                        "is often fastest")
    p.add_argument("--out", default=None, help="where eval.json and eval.png go (default: the checkpoint's run)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def build_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gato-train eval", description="Evaluate a checkpoint on a suite of tasks.")
    _policy_options(p)
    p.add_argument("--suite", required=True, help="YAML file listing the tasks (env, data, episodes, max_steps)")
    p.add_argument("--episodes", type=int, default=None, help="episodes per task (overrides the suite)")
    return p


def build_parser() -> argparse.ArgumentParser:
    """`gato-train rollout`: one task, given on the command line."""
    from tokenizer_kit.argtypes import positive_int

    p = argparse.ArgumentParser(prog="gato-train rollout", description="Run a checkpoint as a policy in one task.")
    _policy_options(p)
    p.add_argument("--data", required=True, help="RL shard directory of the task: its EpisodeSpec, prompts, "
                                                 "and the demonstrations' return")
    p.add_argument("--env", required=True, help="environment id, e.g. CartPole-v1, ALE/Breakout-v5")
    p.add_argument("--task", default=None, help="task name inside --data when it holds several")
    p.add_argument("--episodes", type=positive_int, default=10)
    p.add_argument("--prompt", choices=PROMPT_MODES, default="end",
                   help="demonstration prompt: the end of an expert episode, a random window, or none")
    p.add_argument("--rescale-actions", action="store_true",
                   help="wrap Box action spaces to [-1, 1] when the manifest does not record how the "
                        "demonstrations were recorded")
    p.add_argument("--max-steps", type=positive_int, default=None, help="cut episodes after this many steps")
    p.add_argument("--success", type=float, default=None, help="return above which an episode succeeded")
    return p


def _run(args: argparse.Namespace, tasks: list[TaskSpec], out: Path | None) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = load_policy(args.checkpoint, args.device, args.seq_len, args.prompt_tokens, args.temperature,
                         args.seed, args.cache)
    return run_suite(policy, tasks, out, progress=args.progress and sys.stderr.isatty())


def rollout(args: argparse.Namespace) -> dict:
    """One task from the command line, through the suite's code."""
    task = TaskSpec(args.env, args.data, task=args.task, episodes=args.episodes, max_steps=args.max_steps,
                    success=args.success, prompt=args.prompt, rescale_actions=args.rescale_actions)
    return _run(args, [task], Path(args.out) if args.out else None)


def evaluate(args: argparse.Namespace) -> dict:
    tasks = read_suite(args.suite)
    if args.episodes:
        tasks = [TaskSpec(**(asdict(t) | {"episodes": args.episodes})) for t in tasks]
    from .checkpoint import checkpoint_path
    out = Path(args.out) if args.out else checkpoint_path(args.checkpoint).parent
    return _run(args, tasks, out)


def _main(prog: str, parser: argparse.ArgumentParser, fn, argv) -> int:
    from .checkpoint import CheckpointError

    args = parser.parse_args(argv)
    try:
        report = fn(args)
    except (ValueError, FileNotFoundError, OSError, CheckpointError) as e:
        print(f"{prog}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    print("\n".join(report["lines"]))
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    return _main("gato-train eval", build_eval_parser(), evaluate, argv)


def rollout_main(argv: list[str] | None = None) -> int:
    return _main("gato-train rollout", build_parser(), rollout, argv)
