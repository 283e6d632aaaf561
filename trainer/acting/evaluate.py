"""Evaluating a checkpoint as a policy: a suite of tasks, each scored against random and expert play.

    gato-train eval --checkpoint RUN --suite suite.yaml
    gato-train rollout --checkpoint RUN --data SHARD_DIR --env CartPole-v1 --episodes 10

The suite file is read by trainer/acting/suite.py; the results, scores and eval.json are
trainer/acting/eval_report.py's.

For each task: the agent's return, a uniformly random policy's and the expert's (the
demonstrations') over the same horizon, and the expert-normalised score
(agent - random) / (expert - random), with its 95% bootstrap interval. Across tasks, as rliable
(Agarwal et al. 2021) reports them (trainer/acting/scores.py): the mean, median, interquartile mean and
optimality gap of the per-task scores of one or more runs (`--checkpoint A B C`, or `--results`
with several eval.json files), each with a stratified bootstrap 95% interval over runs. Episode
e of a task starts from reset(seed=first seed + e); the seeds are recorded per task.
`rollout` is the one-task form of the same code.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from schemas.env_spec import EnvSpec
from tokenizer_kit.errors import run_command
from tokenizer_kit.options import from_namespace
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.sequence import default_prompt_len

from ..checkpoint import CheckpointError, checkpoint_path, load_model, read_checkpoint
from ..cli import options_parser
from ..run_config import CONFIG_NAME, RunRecord, TrainArgs, opt
from .envs import EnvWrappers, make_env_fn
from .eval_report import TaskResult, build_report, combine_reports, write_report
from .rollout import PROMPT_MODES, Agent, load_demonstrations, run_episodes
from .suite import TaskSpec, eval_seeds, read_suite


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
    layout: VocabLayout
    seq_len: int
    prompt_tokens: int
    temperature: float = 0.0
    seed: int = 0
    cache: bool = True
    name: str = ""  # the checkpoint it was loaded from


def load_policy(checkpoint, device: str = "cpu", seq_len: int | None = None, prompt_tokens: int | None = None,
                temperature: float = 0.0, seed: int = 0, cache: bool = True) -> Policy:
    model, layout, config = load_model(checkpoint, map_location=device)
    trained = training_args(checkpoint)
    seq_len = int(seq_len or config.seq_len or (trained.seq_len if trained else 1024))
    prompt = int(prompt_tokens or default_prompt_len(seq_len))  # as in training
    return Policy(model, layout, seq_len, prompt, temperature, seed, cache, str(checkpoint))


def training_args(checkpoint):
    """The options the run was trained with (a typed TrainArgs): its config.json, else the checkpoint's;
    None when neither records them."""
    run = checkpoint_path(checkpoint).parent
    if (run / CONFIG_NAME).is_file():
        return RunRecord.read(run).train
    saved = read_checkpoint(checkpoint).get("args")
    return TrainArgs.from_dict(saved, f"{checkpoint_path(checkpoint)}: field 'args'") if saved else None


def evaluate_task(policy: Policy, task: TaskSpec, progress: bool = False) -> TaskResult:
    """Play `task.episodes` episodes with the policy, and as many with a random one, from the same seeds."""
    seeds = eval_seeds(task, policy.seed)
    demos = load_demonstrations(task.data, task.task)
    assert demos.manifest is not None, "load_demonstrations keeps the manifest"
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


def run_suite(policies: list[Policy] | Policy, tasks: list[TaskSpec], out: Path | None, progress: bool = True) -> dict:
    """Evaluate every task with every policy (one run each); write eval.json and eval.png into
    `out` (when given); return the report."""
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


# --- command line --------------------------------------------------------------------------------------

@dataclass
class PolicyOptions:
    """The options of `gato-train eval` and `rollout` that load and run a checkpoint (run_config.opt)."""

    checkpoint: list[str] | None = opt(None, "training run directory (as written by gato-train --out); several: one "
                                             "run each (training seeds), aggregated over runs", cli="list",
                                       metavar="RUN")
    seed: int = opt(0, "sampling seed, and the first evaluation seed of tasks without their own (episode e starts "
                       "from reset(seed=SEED + e)); seeds the data was recorded on are refused", lo=0)
    temperature: float = opt(0.0, "0 = greedy (default)", lo=0)
    seq_len: int | None = opt(None, "context length (default: the training run's --seq-len)", lo=1)
    prompt_tokens: int | None = opt(None, "prompt length (default: the training run's, seq_len / 4)", lo=1)
    cache: bool = opt(True, "run the whole context for every token (slow; the cache's reference)", cli="flag")
    device: str = opt("cpu", "cpu, cuda, cuda:N", metavar="DEVICE")
    threads: int = opt(0, "torch CPU threads (default: torch's choice); acting runs small batches, where 1 thread "
                          "is often fastest", lo=0)
    out: str | None = opt(None, "where eval.json and eval.png go (default: the checkpoint's run)", metavar="DIR")
    progress: bool = opt(True, "no progress bar", cli="flag")


@dataclass
class EvalOptions(PolicyOptions):
    """`gato-train eval`: a suite of tasks, or the aggregates of eval.json files."""

    suite: str | None = opt(None, "YAML file listing the tasks (env, data, episodes, max_steps)",
                                 metavar="SUITE.YAML")
    results: list[str] | None = opt(None, "instead of acting: aggregate the runs of these eval.json files (same "
                                          "tasks)", cli="list", metavar="EVAL_JSON")
    episodes: int | None = opt(None, "episodes per task (overrides the suite)")


@dataclass
class RolloutOptions(PolicyOptions):
    """`gato-train rollout`: one task, given on the command line."""

    data: str = opt("", "RL shard directory of the task: its EpisodeSpec, prompts, and the demonstrations' return",
                    required=True, metavar="DIR")
    env: str = opt("", "environment id, e.g. CartPole-v1, ALE/Breakout-v5", required=True, metavar="ID")
    task: str | None = opt(None, "task name inside --data when it holds several", metavar="NAME")
    episodes: int = opt(10, "episodes to play", lo=1)
    prompt: str = opt("end", "demonstration prompt: the end of an expert episode, a random window, or none",
                      choices=PROMPT_MODES)
    rescale_actions: bool = opt(False, "wrap Box action spaces to [-1, 1] when the manifest does not record how the "
                                       "demonstrations were recorded", cli="flag")
    max_steps: int | None = opt(None, "cut episodes after this many steps", lo=1)
    success: float | None = opt(None, "return above which an episode succeeded")


def _run(args: PolicyOptions, tasks: list[TaskSpec], out: Path | None) -> dict:
    assert args.checkpoint, "_main asks for --checkpoint"
    if args.threads:
        torch.set_num_threads(args.threads)
    policies = [load_policy(c, args.device, args.seq_len, args.prompt_tokens, args.temperature, args.seed, args.cache)
                for c in args.checkpoint]
    return run_suite(policies, tasks, out, progress=args.progress and sys.stderr.isatty())


def rollout(args: RolloutOptions) -> dict:
    """One task from the command line, through the suite's code."""
    task = TaskSpec(args.env, args.data, task=args.task, episodes=args.episodes, max_steps=args.max_steps,
                    success=args.success, prompt=args.prompt, rescale_actions=args.rescale_actions)
    return _run(args, [task], Path(args.out) if args.out else None)


def evaluate(args: EvalOptions) -> dict:
    if args.results:
        return combine_reports(args.results, Path(args.out) if args.out else None, args.seed)
    assert args.suite is not None and args.checkpoint, "_main asks for --checkpoint and --suite"
    tasks = read_suite(args.suite)
    if args.episodes:
        tasks = [TaskSpec(**(asdict(t) | {"episodes": args.episodes})) for t in tasks]
    out = Path(args.out) if args.out else checkpoint_path(args.checkpoint[0]).parent
    return _run(args, tasks, out)


def _main(prog: str, options: type, description: str, fn, argv) -> int:
    parser = options_parser(options, prog, description)
    args = from_namespace(options, parser.parse_args(argv))
    if isinstance(args, EvalOptions):  # acting on a suite, or combining eval.json files: one of the two
        if (args.checkpoint or args.suite) if args.results else not (args.checkpoint and args.suite):
            parser.error("give --checkpoint and --suite, or --results EVAL_JSON...")
    elif not args.checkpoint:
        parser.error("give --checkpoint")

    def work() -> int:
        print("\n".join(fn(args)["lines"]))
        return 0

    return run_command(prog, work, (ValueError, FileNotFoundError, CheckpointError))


def eval_main(argv: list[str] | None = None) -> int:
    return _main("gato-train eval", EvalOptions, "Evaluate a checkpoint on a suite of tasks.", evaluate, argv)


def rollout_main(argv: list[str] | None = None) -> int:
    return _main("gato-train rollout", RolloutOptions, "Run a checkpoint as a policy in one task.", rollout, argv)
