"""Evaluation suites: which tasks a checkpoint is played in, read from YAML and checked.

A suite lists tasks:

    tasks:
      - env: CartPole-v1          # any id an installed package registers
        data: shards/cartpole     # RL shard directory: EpisodeSpec, prompts, the expert's return
        episodes: 20
        max_steps: 500            # optional; the horizon of agent, random and expert alike
        success: 0                # optional: an episode whose return exceeds this succeeded
        seed: 1000000             # optional: the first evaluation seed (default: --seed)
        recorded_seeds: 0-99      # optional: seeds the data was recorded on; evaluating on one is refused
        env_spec: {id: ..., kwargs: {...}, wrappers: [...]}   # optional: overrides the manifest's

Episode e of a task starts from reset(seed=first seed + e); seeds the demonstrations were recorded
on (the suite's `recorded_seeds` and the manifest's) are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import yaml

from schemas.env_spec import EnvSpec, EnvSpecError
from schemas.reader import ShardDir

from .rollout import PROMPT_MODES


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
    parsed = cast("list[list[int]] | None", task.recorded_seeds)  # parse_seeds' result (TaskSpec.__post_init__)
    ranges = list(parsed or [])
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
            want = _FIELD_TYPES[cast(str, TaskSpec.__dataclass_fields__[key].type)]  # a string: future annotations
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
