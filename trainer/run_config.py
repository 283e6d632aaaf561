"""The run config: every `gato-train` option defined once, and the run record `RUN/config.json`.

`TrainArgs` is the one definition of each option: its default, its range or choices, its help and
whether it defines the run (`fixed`: a resume must not change it). The command line is built from
these fields (trainer.cli), a `--config run.yaml` fills the same fields, and both go through the
same range check (`check_value`), so a value means the same wherever it comes from.

`RunRecord` is `config.json`: the resolved options, the model config, the tasks, the git commit
and the versions of torch, pyarrow and gato-kit that trained the run. Written atomically at every
start, read back typed (evaluation, generation, a resume), never as a raw dict.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import yaml

from schemas.names import redact
from tokenizer_kit.files import atomic_path
from tokenizer_kit.options import UsageError, flag, opt  # noqa: F401 (UsageError, flag: trainer's names)
from tokenizer_kit.options import check_value as check_field

from .devices import device_arg
from .model import PRESETS, GatoConfig

CONFIG_NAME = "config.json"
RECORD_VERSION = 1
DEFAULT_LR = {"tiny": 1e-3}  # paper presets: 1e-4 (the paper's peak learning rate)
LOGGERS = ("jsonl", "tensorboard", "wandb")


class RunConfigError(ValueError):
    """A config.json or run.yaml that cannot be read as a run config: one line naming the field."""


@dataclass
class TrainArgs:
    """Every option of a training run (see `opt`)."""

    data: list[str] = opt([], "shard directories (paths or URLs: s3://, gs://, file://), each with an optional "
                              "mixture weight (tokens)", cli="list", metavar="DIR[:W]", fixed=True)
    out: str = opt("", "run directory, a path or a URL (checkpoint, metrics.jsonl, loss.png)", metavar="RUN")
    preset: str = opt("tiny", "model size", choices=tuple(sorted(PRESETS)), fixed=True)
    steps: int = opt(1000, "optimiser steps in total", lo=1)
    batch_size: int = opt(8, "sequences per micro-batch per process", lo=1, fixed=True)
    seq_len: int = opt(1024, "tokens per sequence", lo=1, fixed=True)
    # at most 10: 1e300 overflows the optimiser's float32 state
    lr: float | None = opt(None, "peak learning rate, in (0, 10] (default 1e-3 tiny, 1e-4 paper sizes)", lo=0,
                           lo_open=True, hi=10, fixed=True)
    warmup: int | None = opt(None, "linear warm-up steps (default min(15000, steps/10))", lo=0, fixed=True)
    grad_accum: int = opt(1, "micro-batches per optimiser step", lo=1, fixed=True)
    seed: int = opt(0, "seed of data order and init", lo=0, fixed=True)
    weight_decay: float = opt(0.1, "AdamW weight decay on matrices", lo=0, fixed=True)
    min_lr_ratio: float = opt(0.1, "the cosine schedule's floor, as a share of the peak", lo=0, hi=1, fixed=True)
    clip: float = opt(1.0, "gradient norm clipping", lo=0, lo_open=True, fixed=True)
    prompt_prob: float = opt(0.25, "fraction of RL sequences given a prompt", lo=0, hi=1, fixed=True)
    action_noise: float = opt(0.0, "in training inputs (never targets), replace this share of continuous action "
                                   "tokens by other action tokens of the batch: a guard against copying past "
                                   "actions", lo=0, hi=1, hi_open=True, fixed=True, metavar="SHARE")
    precision: str = opt("auto", "bf16 autocast or fp32 (auto: bf16 on CUDA, fp32 on CPU)",
                         choices=("auto", "fp32", "bf16"), fixed=True)
    # not fixed: a resume may change it (the loader shares the units the old workers left unread)
    num_workers: int = opt(0, "loader worker processes per rank", lo=0)
    eval_every: int = opt(0, "evaluate every N steps (0: at the end only)", lo=0)
    eval_steps: int = opt(8, "batches per evaluation", lo=1)
    eval_data: list[str] | None = opt(None, "held-out shard directories (default: the test split of each training "
                                            "directory, else its training rows)",
                                      cli="list", metavar="DIR")
    eval_suite: str | None = opt(None, "a suite YAML (as `gato-train eval` reads) played at every evaluation with "
                                       "the current weights: eval/TASK/return, eval/TASK/score and eval/score "
                                       "(the mean expert-normalised score) logged like the loss",
                                 metavar="SUITE.YAML")
    log_every: int = opt(10, "write metrics every N steps", lo=1)
    log: str = opt("jsonl", "where metrics go besides metrics.jsonl: a comma list of jsonl, tensorboard "
                            "(RUN/tb), wandb (offline unless WANDB_MODE says otherwise)", metavar="LIST")
    save_every: int = opt(500, "checkpoint every N steps, keeping a copy RUN/checkpoints/step-N.pt", lo=1)
    keep_last: int = opt(0, "step copies kept: the newest K (0: every one)", lo=0, metavar="K")
    keep_best: str | None = opt(None, "keep RUN/best.pt, the checkpoint best by this evaluation metric (lower "
                                      "is better for a loss, higher for a score), e.g. eval_loss",
                                metavar="METRIC")
    compile: bool = opt(False, "torch.compile the model", cli="flag")
    device: str = opt("auto", "cpu, cuda, cuda:N")
    progress: bool = opt(True, "no tqdm bar", cli="flag")
    cache_dir: str | None = opt(None, "local cache of shards read from URLs, and the staging copy of a URL --out "
                                      "(default $XDG_CACHE_HOME/gato-kit or ~/.cache/gato-kit)", metavar="DIR")
    cache_limit: int | None = opt(None, "most bytes of shards kept in the cache (e.g. 50G); least recently used "
                                        "go first", lo=1, size=True, metavar="BYTES")
    init_from: str | None = opt(None, "start from another run's weights (its model size and vocabulary; a fresh "
                                      "optimiser and schedule)", metavar="RUN")

    # --- checks ---------------------------------------------------------------------------------
    def check(self) -> "TrainArgs":
        """Every field's type and range (the same check the command line's argument types make)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_value(f.name, getattr(self, f.name), TrainArgs))
        return self

    def resolve(self) -> "TrainArgs":
        """Checked, with the defaults that depend on other options filled in."""
        self.check()
        if self.lr is None:
            self.lr = DEFAULT_LR.get(self.preset, 1e-4)
        if self.warmup is None:
            self.warmup = min(15000, self.steps // 10)
        return self

    @property
    def loggers(self) -> list[str]:
        return [x for x in self.log.split(",") if x]

    @classmethod
    def from_dict(cls, d: object, where: str = "config") -> "TrainArgs":
        """Typed and range-checked; an unknown key is refused (a typo would silently be a default)."""
        if not isinstance(d, dict):
            raise RunConfigError(f"{where}: expected a mapping of options, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for key, value in d.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise RunConfigError(f"{where}: unknown option {key!r}")
            try:
                values[name] = check_value(name, value)
            except UsageError as e:
                raise RunConfigError(f"{where}: {e}") from None
        return cls(**values)


FIELDS = {f.name: f for f in dataclasses.fields(TrainArgs)}
# Arguments that define the run; a resume must not change them (it would not continue the run).
FIXED_ARGS = tuple(name for name, f in FIELDS.items() if f.metadata["fixed"])


def check_value(name: str, value: Any, options: type | None = None) -> Any:
    """`value` for option `name` of the dataclass `options` (TrainArgs unless a subcommand's),
    converted and range-checked by its field (tokenizer_kit.options), then what only gato-train
    knows: --data items, --log loggers, --device. The command line and config files both come here."""
    f = FIELDS[name] if options in (None, TrainArgs) else {g.name: g for g in dataclasses.fields(options)}[name]
    value = check_field(f, value)
    if name == "data" and options in (None, TrainArgs) and value is not None:
        from .data import parse_data_arg  # noqa: PLC0415 - start-up: pyarrow, not loaded by `gato-train --help` (.data)
        from .source import DataError  # noqa: PLC0415 - start-up: pyarrow, not loaded by `gato-train --help`
        for item in value:
            try:
                parse_data_arg(item)
            except DataError as e:
                raise UsageError(str(e)) from None
    if name == "log" and options in (None, TrainArgs):
        bad = [x for x in value.split(",") if x not in LOGGERS]
        if bad:
            raise UsageError(f"--log: unknown logger {bad[0]!r}; expected a comma list of {', '.join(LOGGERS)}")
    if name == "device":  # a device torch does not know, or CUDA where there is none: bad usage, not a traceback
        try:
            device_arg(value)
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"--device: {e}") from None
    return value


def read_yaml_config(path: str | os.PathLike) -> dict:
    """The options of a run.yaml (keys as the long options without dashes: `batch_size: 8`), checked."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RunConfigError(f"{path}: unreadable config ({str(e).splitlines()[0]})") from None
    doc = {} if doc is None else doc
    TrainArgs.from_dict(doc, str(path))  # every key and value checked here, naming the file
    return {str(k).replace("-", "_"): v for k, v in doc.items()}


def redacted(value: Any) -> Any:
    """An option's value as a run keeps it on disk: URL credentials removed (schemas.names.redact)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value


def redacted_args(args: TrainArgs) -> dict:
    """The options as config.json and checkpoints keep them: no URL credentials."""
    return {k: redacted(v) for k, v in asdict(args).items()}


# --- the run record: config.json --------------------------------------------------------------

def git_commit(start: Path | None = None) -> str | None:
    """The commit of the source tree gato-kit runs from, when it is a git checkout (None otherwise)."""
    where = start or Path(__file__).resolve().parent.parent
    try:
        r = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    head = r.stdout.strip()
    try:
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        dirty = ""
    return head + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    import pyarrow  # noqa: PLC0415 - start-up: pyarrow, not loaded by `gato-train --help`

    try:
        own = importlib.metadata.version("gato-kit")
    except importlib.metadata.PackageNotFoundError:
        own = "unknown"
    return {"torch": torch.__version__, "pyarrow": pyarrow.__version__, "gato-kit": own}


@dataclass
class RunRecord:
    """`RUN/config.json`: what trained the run, resolved."""

    train: TrainArgs
    model: GatoConfig
    tasks: list[str]
    git_commit: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    wandb_id: str | None = None  # the W&B run this run logs to (kept across resumes)
    version: int = RECORD_VERSION

    def to_dict(self) -> dict:
        return {"version": self.version, "train": redacted_args(self.train), "model": self.model.to_dict(),
                "tasks": list(self.tasks), "git_commit": self.git_commit, "versions": dict(self.versions),
                "wandb_id": self.wandb_id}

    def write(self, run_dir: str | os.PathLike) -> Path:
        path = Path(run_dir) / CONFIG_NAME
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> "RunRecord":
        """Typed and checked; RunConfigError naming the file and field otherwise."""
        path = Path(run_dir) / CONFIG_NAME
        try:
            d = json.loads(path.read_text())
        except OSError as e:
            raise RunConfigError(f"{path}: unreadable ({e.strerror or e})") from None
        except ValueError as e:
            raise RunConfigError(f"{path}: not JSON ({e})") from None
        if not isinstance(d, dict) or d.get("version") != RECORD_VERSION:
            raise RunConfigError(f"{path}: not a gato-kit run record of version {RECORD_VERSION}")
        train = TrainArgs.from_dict(d.get("train"), f"{path}: field 'train'")
        try:
            model = GatoConfig.from_dict(cast(dict, d.get("model")))  # not a dict: an error caught below
        except (TypeError, ValueError, AttributeError) as e:
            raise RunConfigError(f"{path}: field 'model': {e}") from None
        tasks = d.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise RunConfigError(f"{path}: field 'tasks' must be a list of names")
        vers = d.get("versions") or {}
        if not isinstance(vers, dict) or not all(isinstance(v, str) for v in vers.values()):
            raise RunConfigError(f"{path}: field 'versions' must map names to version strings")
        for key in ("git_commit", "wandb_id"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise RunConfigError(f"{path}: field {key!r} must be a string")
        return cls(train, model, tasks, d.get("git_commit"), vers, d.get("wandb_id"))
