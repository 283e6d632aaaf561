"""What a training run measures besides its step's loss: the held-out loss of each directory, the
--eval-suite scores with the current weights, per-task losses over the steps since the last
record, whether a record improves --keep-best, and metrics.jsonl cut back to a checkpoint."""

from __future__ import annotations

import json
import random
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from schemas.reader import ShardDir
from tokenizer_kit.files import atomic_path
from tokenizer_kit.sequence import default_prompt_len

from .data import build_loader, parse_data_arg
from .distributed import Dist
from .report import read_metrics
from .run_config import TrainArgs


class HeldOutLoss:
    """Mean target-token loss, overall and per task, on `eval_steps` batches of each directory.

    Reads --eval-data (held-out directories) when given, else each training directory's test
    split (`gato-tokenize --test-share`, or a source's own test files), else (said once on
    stdout) its training rows. Each directory gets its own loader in evaluation mode (rows in
    order, deterministic windows and patch positions), so every task is measured, on the same
    batches at every evaluation. The loaders are built at the first evaluation.
    """

    def __init__(self, args: TrainArgs, tasks: list[str], layout, cache, d: Dist, device: torch.device):
        self.args, self.layout, self.cache, self.d, self.device = args, layout, cache, d, device
        self.names = list(tasks)
        self.loaders: list[tuple] | None = None  # (loader, its task ids -> self.names)

    def _build(self) -> list[tuple]:
        args, out = self.args, []
        for item in args.eval_data or args.data:
            path = parse_data_arg(item)[0]
            subset = None
            if not args.eval_data:
                manifest = ShardDir.open(path, cache=self.cache).manifest
                assert manifest is not None, "the training loader read this directory's manifest"
                held_out = manifest.rows_in("test") > 0
                subset = "test" if held_out else "train"
                if not held_out and self.d.main:
                    print(f"gato-train: {path} has no test split: its eval loss is measured on training rows "
                          f"(convert with --test-share, or give --eval-data)")  # a note, not an error: stdout
            loader = build_loader([path], args.seq_len, args.batch_size, seed=args.seed,
                                  rank=self.d.rank, world_size=self.d.world, training=False,
                                  prompt_prob=args.prompt_prob, layout=self.layout, cache=self.cache,
                                  subset=subset)
            self.names += [n for n in loader.tasks if n not in self.names]
            task_map = torch.tensor([self.names.index(n) for n in loader.tasks], dtype=torch.int64)
            out.append((loader, task_map.to(self.device)))
        return out

    @torch.no_grad()
    def __call__(self, model, autocast) -> dict:
        """{eval_loss, eval_loss/TASK} of `model` (put back in training mode), summed over ranks."""
        if self.loaders is None:
            self.loaders = self._build()
        ne = len(self.names)
        stats = torch.zeros(2 * ne, device=self.device)
        model.eval()
        for loader, task_map in self.loaders:
            for b in islice(iter(loader), self.args.eval_steps):
                b = b.to(self.device)
                with autocast():
                    s, n = model.loss_terms(b)
                tid = task_map[b.task_id]
                stats[:ne].index_add_(0, tid, s.float())
                stats[ne:].index_add_(0, tid, n.float())
        model.train()
        sums: list[float] = self.d.all_reduce(stats).cpu().tolist()
        out = {}
        total_s, total_n = sum(sums[:ne]), sum(sums[ne:])
        if total_n > 0:
            out["eval_loss"] = total_s / total_n
        for t, name in enumerate(self.names):
            if sums[ne + t] > 0:
                out[f"eval_loss/{name}"] = sums[t] / sums[ne + t]
        return out


@torch.no_grad()
def suite_metrics(model, layout, args: TrainArgs, suite, d: Dist, device: torch.device) -> dict:
    """Act in the --eval-suite tasks with the current weights (greedy, the suite's seeds): each
    task's mean return and expert-normalised score, and the mean score (eval/score). Played on
    rank 0 (the numbers are broadcast), inside saved and restored RNG states: the training
    stream is the same with or without it, and a resumed run logs the same numbers."""
    from .acting.evaluate import Policy, evaluate_task  # noqa: PLC0415 - acting (gymnasium, env plugins) loads only for --eval-suite

    out: dict = {}
    if d.main:
        np_state, py_state = np.random.get_state(), random.getstate()
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            model.eval()
            try:
                policy = Policy(model, layout, args.seq_len, default_prompt_len(args.seq_len), 0.0, args.seed, True)
                scores = []
                for task in suite:
                    r = evaluate_task(policy, task)
                    out[f"eval/{task.name}/return"] = float(np.mean(r.agent))
                    out[f"eval/{task.name}/score"] = r.score
                    scores.append(r.score)
                out["eval/score"] = float(np.mean(scores))
            finally:
                model.train()
                np.random.set_state(np_state)
                random.setstate(py_state)
    if d.world > 1:
        box = [out]
        dist.broadcast_object_list(box, src=0)
        out = box[0]
    return out


class TaskLosses:
    """Per-task loss sums and target counts since the last record (one step's batch rarely holds
    every task, so a task's loss is averaged over the steps between records)."""

    def __init__(self, tasks: list[str]):
        self.tasks = list(tasks)
        self.reset()

    def reset(self) -> None:
        self.sums, self.counts = [0.0] * len(self.tasks), [0.0] * len(self.tasks)

    def add(self, sums: list[float], counts: list[float]) -> None:
        self.sums = [a + b for a, b in zip(self.sums, sums, strict=True)]
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]

    def record(self) -> dict:
        """{target_tokens/TASK, loss/TASK} since the last record; starts the next span."""
        out: dict = {}
        for name, ts, tc in zip(self.tasks, self.sums, self.counts, strict=True):
            out[f"target_tokens/{name}"] = int(tc)  # since the last record
            if tc > 0:
                out[f"loss/{name}"] = ts / tc
        self.reset()
        return out


def keep_best_metrics(suite) -> list[str]:
    """The metrics --keep-best may name (besides eval_loss/TASK): what this run evaluates."""
    return ["eval_loss"] + ([f"eval/{t.name}/{k}" for t in suite for k in ("return", "score")]
                            + ["eval/score"] if suite else [])


def improves(best: dict | None, rec: dict, metric: str | None, step: int) -> dict | None:
    """The new best ({metric, value, step}) when this record's --keep-best metric beats `best`
    (lower for a loss, higher otherwise); None when it does not."""
    if metric is None or rec.get(metric) is None:
        return None
    value = float(rec[metric])
    lower = "loss" in metric
    if best is None or (value < best["value"] if lower else value > best["value"]):
        return {"metric": metric, "value": value, "step": step}
    return None


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the records of metrics.jsonl logged after `step` (the checkpoint), so a resumed run
    rewrites them; a last line a crash cut off is dropped, any other bad line raises MetricsError."""
    if not path.is_file():
        return
    keep = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
