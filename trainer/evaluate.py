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
        seed: 1000000             # optional: the first evaluation seed (default: --seed)
        recorded_seeds: 0-99      # optional: seeds the data was recorded on; evaluating on one is refused
        env_spec: {id: ..., kwargs: {...}, wrappers: [...]}   # optional: overrides the manifest's

For each task: the agent's return, a uniformly random policy's and the expert's (the
demonstrations') over the same horizon, and the expert-normalised score
(agent - random) / (expert - random), with its 95% bootstrap interval. Across tasks, as rliable
(Agarwal et al. 2021) reports them (trainer/scores.py): the mean, median, interquartile mean and
optimality gap of the per-task scores of one or more runs (`--checkpoint A B C`, or `--results`
with several eval.json files), each with a stratified bootstrap 95% interval over runs. Episode
e of a task starts from reset(seed=first seed + e); the seeds are recorded per task.
`rollout` is the one-task form of the same code.
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
    seed: int | None = None  # first evaluation seed (default: the command's --seed)
    recorded_seeds: object = None  # seeds the demonstrations were recorded on: "A-B", or a list of ints
    env_spec: dict | None = None  # schemas.env_spec.EnvSpec form: replaces the environment the manifest records

    def __post_init__(self):
        self.name = self.name or self.env
        self.recorded_seeds = parse_seeds(self.recorded_seeds, self.name)
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise SuiteError(f"task {self.name}: seed must be a non-negative integer")
        if self.env_spec is not None:
            from schemas.env_spec import EnvSpec, EnvSpecError
            try:
                EnvSpec.from_dict(self.env_spec)
            except EnvSpecError as e:
                raise SuiteError(f"task {self.name}: env_spec: {e}") from None
        if self.episodes < 1:
            raise SuiteError(f"task {self.name}: episodes must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise SuiteError(f"task {self.name}: max_steps must be at least 1")
        if self.prompt not in PROMPT_MODES:
            raise SuiteError(f"task {self.name}: prompt must be one of {', '.join(PROMPT_MODES)}")


_FIELD_TYPES = {"str": (str,), "str | None": (str, type(None)), "int": (int,), "int | None": (int, type(None)),
                "float | None": (int, float, type(None)), "bool": (bool,), "dict | None": (dict, type(None)),
                "object": (object,)}  # TaskSpec's annotations (object: checked by its own parser)


def parse_seeds(value, task: str) -> list[list[int]] | None:
    """Recorded seeds as [first, last] ranges: "A-B" (inclusive), an int, or a list of ints."""
    if value is None:
        return None
    if isinstance(value, str):
        a, _, b = value.partition("-")
        try:
            lo, hi = int(a), int(b or a)
        except ValueError:
            raise SuiteError(f"task {task}: recorded_seeds {value!r}: expected A-B or a list of integers") from None
        if not 0 <= lo <= hi:
            raise SuiteError(f"task {task}: recorded_seeds {value!r}: expected 0 <= A <= B")
        return [[lo, hi]]
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise SuiteError(f"task {task}: recorded_seeds must be non-negative integers")
    return [[v, v] for v in sorted(set(values))]


def recorded_seeds(task: TaskSpec) -> list[list[int]]:
    """[first, last] ranges of the seeds the task's demonstrations were recorded on: the suite's
    `recorded_seeds`, and those the converter found in the data (Minari episode metadata)."""
    from schemas.reader import ShardDir

    ranges = list(task.recorded_seeds or [])
    try:
        manifest = ShardDir.open(task.data).manifest
    except (OSError, ValueError):
        return ranges  # an unreadable directory is reported when its demonstrations are loaded
    found = (manifest.options or {}).get("recorded_seeds") if manifest is not None else None
    if found is not None:
        try:
            ranges += [[int(a), int(b)] for a, b in found]
        except (TypeError, ValueError):
            raise SuiteError(f"{task.data}: manifest option recorded_seeds is not a list of [first, last] "
                             f"ranges") from None
    return ranges


def eval_seeds(task: TaskSpec, default: int) -> list[int]:
    """The seeds a task's episodes start from; refused (one line) when one was recorded on."""
    first = task.seed if task.seed is not None else default
    seeds = list(range(first, first + task.episodes))
    ranges = recorded_seeds(task)
    if ranges:
        seen = sorted(s for s in seeds if any(a <= s <= b for a, b in ranges))
        if seen:
            raise SuiteError(f"task {task.name}: evaluation seeds {seeds[0]}..{seeds[-1]} include {len(seen)} the "
                             f"demonstrations were recorded on (first {seen[0]}); choose another seed")
    return seeds


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
    seeds: list[int] = field(default_factory=list)  # reset seed of each agent (and random) episode

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
    """Returns of a uniformly random policy over the same horizon, from the agent's start states
    (episode i from reset(seed=seed + i)): the floor an agent must beat."""
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
    name: str = ""  # the checkpoint it was loaded from


def load_policy(checkpoint, device: str = "cpu", seq_len: int | None = None, prompt_tokens: int | None = None,
                temperature: float = 0.0, seed: int = 0, cache: bool = True) -> Policy:
    from .checkpoint import load_model

    model, layout, config = load_model(checkpoint, map_location=device)
    trained = training_args(checkpoint)
    seq_len = int(seq_len or config.seq_len or (trained.seq_len if trained else 1024))
    prompt = int(prompt_tokens or seq_len // 4)  # as in training (trainer.sampling.SampleConfig)
    return Policy(model, layout, seq_len, prompt, temperature, seed, cache, str(checkpoint))


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
    """Play `task.episodes` episodes with the policy, and as many with a random one, from the same seeds."""
    from schemas.env_spec import EnvSpec

    seeds = eval_seeds(task, policy.seed)
    demos = load_demonstrations(task.data, task.task)
    demos.layout.check_same(policy.layout, f"shards {task.data}", "checkpoint")
    recorded = EnvSpec.from_dict(task.env_spec) if task.env_spec else None
    make_env = make_env_fn(task.env, wrappers=EnvWrappers.from_manifest(demos.manifest, task.rescale_actions,
                                                                        recorded))
    agent = Agent(policy.model, policy.layout, demos.spec, policy.seq_len, policy.temperature, demos.text_tokenizer,
                  policy.seed, cache=policy.cache, frame_modes=demos.manifest.frame_modes())
    results = run_episodes(agent, make_env, task.episodes, demos.rows, policy.prompt_tokens, task.prompt,
                           seeds[0], task.max_steps, progress=progress, desc=task.name)
    probe = make_env()
    probe.reset(seed=seeds[0])  # some environments (BabyAI) set their time limit at reset
    # the time limit: gymnasium's TimeLimit, else the environment's own (minigrid's max_steps)
    horizon = task.max_steps or getattr(probe.spec, "max_episode_steps", None) or \
        getattr(probe.unwrapped, "max_steps", None)
    probe.close()
    expert, exact = demos.returns_within(task.max_steps)
    if task.expert_return is not None:
        expert, exact = np.asarray([task.expert_return]), True
    rand = random_returns(make_env, task.episodes, seeds[0], task.max_steps)
    return TaskResult(task.name, task.env, [r.ret for r in results], rand, expert.tolist(), exact, horizon,
                      [r.steps for r in results], task.success, seeds)


# --- across tasks and runs --------------------------------------------------------------------------

def iqm(x: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of the values (25% trimmed from each end)."""
    from .scores import aggregate_iqm
    return float(aggregate_iqm(np.asarray(x, np.float64).reshape(1, -1)))


def score_matrix(runs: list[list[TaskResult]]) -> np.ndarray:
    """(runs x tasks) normalised scores; every run must hold the same tasks in the same order."""
    names = [r.name for r in runs[0]]
    for i, run in enumerate(runs[1:], 1):
        if [r.name for r in run] != names:
            raise ValueError(f"run {i} has tasks {[r.name for r in run]}, run 0 {names}: "
                             "aggregates need the same tasks")
    return np.asarray([[r.score for r in run] for run in runs], np.float64)


def build_report(runs: list[list[TaskResult]], names: list[str], seed: int = 0, reps: int = 2000) -> dict:
    """eval.json: per task (the first run's results, every run's score, the task's interval),
    every run's results, and the aggregates over runs."""
    from .scores import aggregates, task_interval

    scores = score_matrix(runs)
    overall = aggregates(scores, reps, seed).to_dict()
    overall["episodes"] = int(sum(len(r.agent) for run in runs for r in run))
    tasks = []
    for j, r in enumerate(runs[0]):
        ci, over = task_interval(scores[:, j], [run[j].normalised() for run in runs], reps, seed + j)
        tasks.append(asdict(r) | {"score": float(scores[:, j].mean()), "run_scores": scores[:, j].tolist(),
                                  "ci": ci, "ci_over": over, "success_rates": r.success_rates()})
    return {"runs": names, "tasks": tasks, "overall": overall,
            "results": [[asdict(r) for r in run] for run in runs]}


def results_from_report(report: dict, path: str) -> list[list[TaskResult]]:
    """The TaskResults of every run an eval.json holds."""
    known = set(TaskResult.__dataclass_fields__)
    try:
        runs = report.get("results") or [report["tasks"]]
        return [[TaskResult(**{k: v for k, v in t.items() if k in known}) for t in run] for run in runs]
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not an eval.json of gato-train eval ({e})") from None


def summary_lines(report: dict) -> list[str]:
    def f(x) -> str:
        x = np.asarray(x, np.float64)
        return f"{x.mean():9.1f} +/- {x.std():6.1f}"

    runs = len(report["runs"])
    lines = [f"{'task':<24}{'horizon':>8}{'agent':>20}{'random':>20}{'expert':>20}{'score':>8}{'95% CI':>16}"]
    for r in report["tasks"]:
        star = "" if r["expert_exact"] else "~"
        ci = f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"
        lines.append(f"{r['name']:<24}{str(r['horizon'] or '-'):>8}{f(r['agent']):>20}{f(r['random']):>20}"
                     f"{star + f(r['expert']).strip():>20}{r['score']:>8.2f}{ci:>16}")
        rates = r["success_rates"]
        if rates:
            lines.append(f"{'':<24}{'success':>8}{rates['agent']:>20.0%}{rates['random']:>20.0%}{rates['expert']:>20.0%}")
    if any(not r["expert_exact"] for r in report["tasks"]):
        lines.append("~ demonstrations longer than the horizon: their returns scaled to it")
    over = report["tasks"][0]["ci_over"] if report["tasks"] else "episodes"
    lines.append(f"score: (agent - random) / (expert - random); a task's CI over its {over}; "
                 "seeds per task in eval.json")
    ov = report["overall"]
    lines.append(f"normalised score over {ov['tasks']} task(s), {runs} run(s), {ov['episodes']} episodes: "
                 + ", ".join(f"{label} {ov[k]:.2f} [{ov[k + '_ci'][0]:.2f}, {ov[k + '_ci'][1]:.2f}]"
                             for k, label in (("mean", "mean"), ("median", "median"), ("iqm", "IQM"),
                                              ("optimality_gap", "optimality gap")))
                 + " (95% stratified bootstrap CI over runs" + (": one run, no spread)" if runs == 1 else ")"))
    return lines


def plot_suite(report: dict, path: Path) -> Path:
    """Each task's expert-normalised score with its interval, and the aggregates over tasks with
    theirs: every bar's error bar is the interval the title names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ov = report["overall"]
    keys = (("mean", "mean"), ("median", "median"), ("iqm", "IQM"), ("optimality_gap", "opt. gap"))
    names = [t["name"] for t in report["tasks"]] + [label for _, label in keys]
    values = [t["score"] for t in report["tasks"]] + [ov[k] for k, _ in keys]
    cis = [t["ci"] for t in report["tasks"]] + [ov[k + "_ci"] for k, _ in keys]
    errs = [[max(0.0, v - c[0]) for v, c in zip(values, cis)], [max(0.0, c[1] - v) for v, c in zip(values, cis)]]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names)), 4))
    n = len(report["tasks"])
    ax.bar(names, values, yerr=errs, color=["tab:blue"] * n + ["tab:gray"] * len(keys), capsize=4)
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="expert")
    ax.axhline(0.0, color="r", lw=0.8, ls=":", label="random")
    ax.set_ylabel("(agent - random) / (expert - random)")
    over = report["tasks"][0]["ci_over"] if n else "runs"
    ax.set_title(f"expert-normalised score, {len(report['runs'])} run(s): 95% stratified bootstrap CIs\n"
                 f"(tasks: over {over}; aggregates: over runs)", fontsize=9)
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def write_report(report: dict, out: Path | None) -> dict:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / EVAL_JSON) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1) + "\n")
        plot_suite(report, out / EVAL_PNG)
    report["lines"] = summary_lines(report)
    return report


def run_suite(policies: list[Policy] | Policy, tasks: list[TaskSpec], out: Path | None, progress: bool = True) -> dict:
    """Evaluate every task with every policy (one run each); write eval.json and eval.png into
    `out` (when given); return the report."""
    from tqdm import tqdm

    policies = [policies] if isinstance(policies, Policy) else list(policies)
    for task in tasks:  # seeds the data was recorded on: refused before any acting
        eval_seeds(task, policies[0].seed)
    runs = []
    for policy in policies:
        runs.append([evaluate_task(policy, task, progress)
                     for task in tqdm(tasks, desc="tasks", unit="task", disable=not progress or len(tasks) < 2,
                                      leave=False)])
    report = build_report(runs, [p.name for p in policies], seed=policies[0].seed)
    return write_report(report, out)


def combine_reports(paths: list[str], out: Path | None, seed: int = 0) -> dict:
    """The aggregates over every run of several eval.json files (one per training seed, say)."""
    runs, names = [], []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable eval.json ({str(e).splitlines()[0]})") from None
        if not isinstance(report, dict):
            raise ValueError(f"{path}: not an eval.json of gato-train eval (not a JSON object)")
        got = results_from_report(report, path)
        given = report.get("runs") if isinstance(report.get("runs"), list) else []
        runs += got
        names += [str(given[i]) if i < len(given) else f"{path}#{i}" for i in range(len(got))]
    return write_report(build_report(runs, names, seed), out)


# --- command line --------------------------------------------------------------------------------------

def _policy_options(p: argparse.ArgumentParser) -> None:
    from tokenizer_kit.argtypes import nonnegative_float, nonnegative_int, positive_int

    p.add_argument("--checkpoint", nargs="+", default=None, metavar="RUN",
                   help="training run directory (as written by gato-train --out); several: one run each (training "
                        "seeds), aggregated over runs")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="sampling seed, and the first evaluation seed of tasks without their own (episode e starts "
                        "from reset(seed=SEED + e)); seeds the data was recorded on are refused")
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
    p.add_argument("--suite", default=None, help="YAML file listing the tasks (env, data, episodes, max_steps)")
    p.add_argument("--results", nargs="+", default=None, metavar="EVAL_JSON",
                   help="instead of acting: aggregate the runs of these eval.json files (same tasks)")
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
    policies = [load_policy(c, args.device, args.seq_len, args.prompt_tokens, args.temperature, args.seed, args.cache)
                for c in args.checkpoint]
    return run_suite(policies, tasks, out, progress=args.progress and sys.stderr.isatty())


def rollout(args: argparse.Namespace) -> dict:
    """One task from the command line, through the suite's code."""
    task = TaskSpec(args.env, args.data, task=args.task, episodes=args.episodes, max_steps=args.max_steps,
                    success=args.success, prompt=args.prompt, rescale_actions=args.rescale_actions)
    return _run(args, [task], Path(args.out) if args.out else None)


def evaluate(args: argparse.Namespace) -> dict:
    if args.results:
        return combine_reports(args.results, Path(args.out) if args.out else None, args.seed)
    tasks = read_suite(args.suite)
    if args.episodes:
        tasks = [TaskSpec(**(asdict(t) | {"episodes": args.episodes})) for t in tasks]
    from .checkpoint import checkpoint_path
    out = Path(args.out) if args.out else checkpoint_path(args.checkpoint[0]).parent
    return _run(args, tasks, out)


def _main(prog: str, parser: argparse.ArgumentParser, fn, argv) -> int:
    from .checkpoint import CheckpointError

    args = parser.parse_args(argv)
    acting = bool(args.checkpoint) and getattr(args, "suite", True) is not None
    if getattr(args, "results", None) and (args.checkpoint or args.suite) or \
            not getattr(args, "results", None) and not acting:
        parser.error("give --checkpoint"
                     + (" and --suite, or --results EVAL_JSON..." if hasattr(args, "suite") else ""))
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
