"""The `gato-train` loop: AdamW, warm-up + cosine, grad clipping and accumulation, DDP, exact resume.

Resuming is exact because everything that decides the next step is in the checkpoint: model and
optimiser state, the step (the schedule is a pure function of it), each rank's loader state and
the RNG states. The loss is a mean over target tokens of the whole global batch (all micro-batches
and ranks), so accumulation and data parallelism do not change what is optimised.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import resource
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from schemas.cache import CacheLimitError, ShardCache, default_cache_dir

from .checkpoint import (BEST_NAME, CHECKPOINT_NAME, CHECKPOINT_VERSION, keep_step_copy, latest_checkpoint,
                         link_or_copy, read_checkpoint, save_checkpoint)
from .data import build_loader
from .distributed import setup_dist
from .loggers import METRICS_NAME, MetricLog
from .metrics import HeldOutLoss, TaskLosses, improves, keep_best_metrics, suite_metrics, truncate_metrics
from .model import GatoConfig, GatoModel
from .report import MetricsError, plot_metrics, summary  # noqa: F401 (plot_metrics: part of this module's interface)
from .run_config import (CONFIG_NAME, DEFAULT_LR, FIXED_ARGS, RunConfigError,  # noqa: F401 (interface)
                         RunRecord, TrainArgs, UsageError, git_commit, redacted, redacted_args, versions)
from .run_store import RunStore

PLOT_NAME = "loss.png"

class TrainError(ValueError):
    """Bad data or a run directory that cannot be continued: one line, exit 1."""


def lr_at(step: int, args: TrainArgs) -> float:
    """Linear warm-up to the peak, then cosine decay to min_lr_ratio of it at the last step."""
    peak, warmup = args.lr, args.warmup
    assert peak is not None and warmup is not None, "TrainArgs.resolve() fills them"
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, args.steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    floor = peak * args.min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _LossModule(nn.Module):
    """Wraps the model so DDP (and torch.compile) see the loss terms as `forward`."""

    def __init__(self, model: GatoModel):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss_terms(batch)


def _plain(obj):
    """Loader state as plain types/tensors, so the checkpoint loads with weights_only=True."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


class Trainer:
    """One training run in RUN: built from args (or the checkpoint in RUN), then `run()`."""

    def __init__(self, args: TrainArgs, explicit: set[str] | None = None):
        """`explicit`: the options the user gave (the others of a resumed run come from its checkpoint);
        None: all of them."""
        self.d, self.device = setup_dist(args.device)

        cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
        self.cache = ShardCache(cache_dir / "shards", args.cache_limit)
        self.store = RunStore(args.out, cache_dir, self.d.rank)  # --out a URL: a local copy, uploaded
        self.store.pull()
        self.out = self.store.local
        self.stop_requested = False  # set by SIGTERM on this rank
        self.stop_agreed = False  # some rank was asked to stop: all stop after this step
        ckpt = self._resume_state(args, set(FIXED_ARGS) | {"steps"} if explicit is None else explicit)
        self.args = args.resolve()
        if "wandb" in args.loggers or "tensorboard" in args.loggers:
            self._check_loggers(args.loggers)
        self.use_bf16 = args.precision == "bf16" or (args.precision == "auto" and self.device.type == "cuda")
        torch.manual_seed(args.seed + self.d.rank)

        layout = None
        init = read_checkpoint(args.init_from, map_location="cpu") if ckpt is None and args.init_from else None
        resumed = ckpt or init
        if resumed is not None:
            layout = GatoConfig.from_dict(resumed["config"]).vocab_layout
        self.loader = build_loader(args.data, args.seq_len, args.batch_size, seed=args.seed,
                                   num_workers=args.num_workers, rank=self.d.rank, world_size=self.d.world,
                                   training=True, prompt_prob=args.prompt_prob, layout=layout, cache=self.cache,
                                   action_noise=args.action_noise, subset="train")
        self.layout = self.loader.layout
        if layout is not None:
            layout.check_same(self.loader.layout, "the data", "checkpoint")
        remote = [src for src in self.loader.sources if src.remote]
        try:  # a limit below what the readers pin at once is refused before any shard is read, naming the
            # minimum (a reader per remote source in each worker, and one in the main process's evaluation)
            self.cache.check_room([i.bytes for src in remote for i in src.manifest.shards],
                                  len(remote) * ((args.num_workers or 1) + 1))
        except CacheLimitError as e:
            raise UsageError(str(e)) from None
        check_fits(self.loader.sources, args.seq_len)
        self.suite = None
        if args.eval_suite:
            from .acting.suite import SuiteError, read_suite  # noqa: PLC0415 - acting (gymnasium, env plugins) loads only for --eval-suite
            try:
                self.suite = read_suite(args.eval_suite)
            except SuiteError as e:
                raise TrainError(str(e)) from None
        if args.keep_best is not None:
            known = keep_best_metrics(self.suite)
            if args.keep_best not in known and not args.keep_best.startswith("eval_loss/"):
                raise UsageError(f"--keep-best {args.keep_best!r} is not a metric this run evaluates; "
                                 f"expected eval_loss, eval_loss/TASK{', ' if self.suite else ''}"
                                 f"{', '.join(known[1:])}")
        self.tasks = list(self.loader.tasks)
        self.held_out = HeldOutLoss(args, self.tasks, self.layout, self.cache, self.d, self.device)
        if ckpt is not None:
            config = GatoConfig.from_dict(ckpt["config"])
        elif init is not None:  # fine-tuning: the other run's model, at this run's context length
            config = GatoConfig.from_dict(init["config"] | {"seq_len": args.seq_len})
        else:
            config = GatoConfig.from_preset(args.preset, self.layout, seq_len=args.seq_len)
        self.config = config
        check_memory(args.batch_size, args.seq_len, config.vocab_size, self.device)
        self.model = GatoModel(config).to(self.device)
        if init is not None:
            self.model.load_state_dict(init["model"])
        assert args.lr is not None, "TrainArgs.resolve() fills it"
        self.opt = torch.optim.AdamW(self.model.param_groups(args.weight_decay), lr=args.lr, betas=(0.9, 0.95),
                                     eps=1e-8, fused=self.device.type == "cuda")
        self.step = 0
        if ckpt is not None:
            self._load(ckpt)
        self.loss_module: nn.Module = _LossModule(self.model)
        if self.d.world > 1:
            self.loss_module = DDP(self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda"
                                   else None)
        if args.compile:
            # Compile the transformer blocks in place (state-dict keys unchanged). The patch
            # embedding stays eager: inductor mis-strides conv backward on a batch with 0 patches.
            for blk in self.model.blocks:
                blk.compile()

    # --- resume -----------------------------------------------------------------------------------
    def _resume_state(self, args: TrainArgs, explicit: set[str]) -> dict | None:
        """The latest complete checkpoint in RUN, with the run's fixed arguments restored (or checked
        against those given), and the run record (config.json) read back typed."""
        self.record = RunRecord.read(self.out) if (self.out / CONFIG_NAME).is_file() else None
        self.elapsed, self.best = 0.0, None
        found = latest_checkpoint(self.out)
        if found is None:
            return None
        path, ckpt = found
        saved = TrainArgs.from_dict(ckpt["args"], f"{path}: field 'args'")
        if self.record is not None:  # the record and the checkpoint describe one run, or neither is trusted
            for name in FIXED_ARGS:
                if redacted(getattr(self.record.train, name)) != redacted(getattr(saved, name)):
                    raise TrainError(f"{self.out / CONFIG_NAME}: --{name.replace('_', '-')} "
                                     f"{getattr(self.record.train, name)} disagrees with {path}'s "
                                     f"{getattr(saved, name)}; the run record does not describe this run")
        for name in FIXED_ARGS:
            given, was = getattr(args, name), getattr(saved, name)
            if given is not None and redacted(given) != redacted(was) and name in explicit:
                raise UsageError(f"{self.out} was started with --{name.replace('_', '-')} {was}, not {given}; "
                                 f"use another --out to start a new run")
            if given is None or name not in explicit:  # (a given one equals it but may hold credentials)
                setattr(args, name, was)
        if "steps" not in explicit:
            args.steps = saved.steps
        self.elapsed = float(ckpt.get("elapsed_s", 0.0))
        self.best = ckpt.get("best")
        return ckpt

    @staticmethod
    def _check_loggers(kinds: list[str]) -> None:
        """A logger asked for but not installed is bad usage, found before any data is read."""
        install = {"tensorboard": "pip install tensorboard", "wandb": "pip install 'gato-kit[wandb]'"}
        for kind in kinds:
            if kind in install and importlib.util.find_spec(kind) is None:
                raise UsageError(f"--log {kind} needs the {kind} package ({install[kind]})")

    def _load(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        loaders = ckpt["loader"]
        try:  # another number of ranks: every rank's state, shared out (elastic resume); another number
            # of workers alone: this rank's own state (its unread units carried, GatoLoader.load_state_dict)
            if len(loaders) != self.d.world:
                self.loader.load_elastic(loaders)
            else:
                self.loader.load_state_dict(loaders[self.d.rank])
        except (ValueError, KeyError, IndexError) as e:
            raise TrainError(f"{self.out}: cannot continue the data stream ({e})") from None
        self.step = int(ckpt["step"])
        rng = ckpt["rng"][self.d.rank % len(ckpt["rng"])]
        torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        if self.d.main:
            self._truncate_metrics(self.step)

    def _truncate_metrics(self, step: int) -> None:
        """Drop records logged after the checkpoint, so the resumed run rewrites them."""
        try:
            truncate_metrics(self.out / METRICS_NAME, step)
        except MetricsError as e:
            raise TrainError(str(e)) from None

    def save(self, best: bool = False) -> None:
        """Every rank contributes its loader and RNG state; rank 0 writes the file atomically, then
        its step copy (pruned to --keep-last) and, when `best`, RUN/best.pt."""
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        loaders = self.d.gather(_plain(self.loader.state_dict()))
        rngs = self.d.gather(rng)
        if self.d.main:
            args = redacted_args(self.args)  # no URL credentials saved
            save_checkpoint({
                "version": CHECKPOINT_VERSION, "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "config": self.config.to_dict(), "args": args,
                "loader": loaders, "rng": rngs, "tasks": self.tasks, "world_size": self.d.world,
                "elapsed_s": self._elapsed(), "best": self.best,
            }, self.out / CHECKPOINT_NAME)
            keep_step_copy(self.out, self.step, self.args.keep_last)
            if best:
                link_or_copy(self.out / CHECKPOINT_NAME, self.out / BEST_NAME)
            self.store.push()
        if self.d.world > 1:
            dist.barrier()

    # --- one step ---------------------------------------------------------------------------------
    def _autocast(self):
        if self.use_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _next_batch(self):
        try:
            return next(self._it)
        except StopIteration:  # a finite loader: start its next pass
            self._it = iter(self.loader)
            return next(self._it)

    def train_step(self) -> dict:
        """Forward/backward over grad_accum micro-batches, clip, AdamW step. Returns step statistics."""
        args, nt = self.args, len(self.tasks)
        lr = lr_at(self.step, args)
        for g in self.opt.param_groups:
            g["lr"] = lr
        micro = [self._next_batch().to(self.device) for _ in range(args.grad_accum)]
        counts = torch.tensor([float(b.loss_mask.sum()) for b in micro]).sum().reshape(1)
        targets = float(self.d.all_reduce(counts.to(self.device)).item())  # the same on every rank
        total = max(targets, 1.0)
        # stats: loss sum, task loss sums (nt), task target counts (nt), input tokens
        stats = torch.zeros(2 + 2 * nt, device=self.device)
        for i, b in enumerate(micro):
            sync = i == len(micro) - 1 or self.d.world == 1
            ctx = contextlib.nullcontext() if sync else cast(DDP, self.loss_module).no_sync()  # world > 1: DDP
            with ctx:
                with self._autocast():
                    s, n = self.loss_module(b)
                (s.sum() * (self.d.world / total)).backward()
            s, n = s.detach().float(), n.detach().float()
            stats[0] += s.sum()
            stats[1:1 + nt].index_add_(0, b.task_id, s)
            stats[1 + nt:1 + 2 * nt].index_add_(0, b.task_id, n)
            stats[-1] += b.attention_mask.sum()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.clip)
        if targets > 0:  # a batch without targets teaches nothing: no update (weight decay included)
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        stop = torch.tensor([float(self.stop_requested)], device=self.device)
        sums: list[float] = self.d.all_reduce(torch.cat([stats, stop])).cpu().tolist()
        self.step += 1
        # Every rank stops after the same step: only the all-reduced flag decides (a SIGTERM that
        # lands on one rank after its flag was sent is seen at the next step).
        self.stop_agreed = sums[-1] > 0
        # no targets: no loss at all (null in metrics.jsonl), never a mean of nothing that reads as 0.0
        return {"step": self.step, "loss": sums[0] / total if targets > 0 else None, "lr": lr,
                "grad_norm": float(grad_norm), "target_tokens": int(targets),
                "tokens": sums[-2], "task_sums": sums[1:1 + nt], "task_counts": sums[1 + nt:1 + 2 * nt]}

    def evaluate(self) -> dict:
        """The held-out loss (trainer.metrics.HeldOutLoss), overall and per task."""
        return self.held_out(self.model, self._autocast)

    def evaluate_suite(self) -> dict:
        """The --eval-suite scores with the current weights (trainer.metrics.suite_metrics)."""
        return suite_metrics(self.model, self.layout, self.args, self.suite, self.d, self.device)

    # --- the loop ---------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        """Seconds of training in this run, resumed attempts included."""
        return self.elapsed + (time.perf_counter() - self._t_start)

    def _improves(self, rec: dict) -> bool:
        """Whether this record's --keep-best metric beats the best so far (kept in self.best)."""
        best = improves(self.best, rec, self.args.keep_best, self.step)
        if best is not None:
            self.best = best
        return best is not None

    def run(self) -> int:
        args = self.args
        if self.d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.step == 0:
                self._truncate_metrics(0)  # records of an earlier attempt that never checkpointed
            wandb_id = self.record.wandb_id if self.record is not None else None
            if wandb_id is None and "wandb" in args.loggers:
                wandb_id = uuid.uuid4().hex[:12]
            self.record = RunRecord(args, self.config, self.tasks, git_commit(), versions(), wandb_id)
            self.record.write(self.out)
            self.log = MetricLog(self.out, args.loggers, self.step, self.record.to_dict(), wandb_id)
        self._t_start = time.perf_counter()
        self.model.train()
        self._it = iter(self.loader)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        if self.d.main and self.step > 0:
            print(f"gato-train: resumed from step {self.step} of {args.steps} in {self.out}", file=sys.stderr)
        bar = None
        if self.d.main and args.progress:
            bar = tqdm(total=args.steps, initial=self.step, desc="gato-train", unit="step", dynamic_ncols=True)
        try:
            t0, tokens = time.perf_counter(), 0.0
            task_losses = TaskLosses(self.tasks)
            while self.step < args.steps:
                rec = self.train_step()
                tokens += rec.pop("tokens")
                task_losses.add(rec.pop("task_sums"), rec.pop("task_counts"))
                last = self.step == args.steps
                do_eval = last or (args.eval_every and self.step % args.eval_every == 0)
                new_best = False
                if self.step % args.log_every == 0 or last or do_eval:
                    dt = time.perf_counter() - t0
                    rec["tokens_per_s"] = tokens / dt if dt > 0 else 0.0
                    rec["tokens"] = tokens
                    rec["time"] = time.time()  # wall clock (unix seconds)
                    rec["elapsed_s"] = self._elapsed()  # seconds of training, resumed attempts included
                    t0, tokens = time.perf_counter(), 0.0
                    rec.update(task_losses.record())
                    if do_eval:
                        rec.update(self.evaluate())
                        if self.suite:
                            rec.update(self.evaluate_suite())
                    new_best = self._improves(rec)
                    if self.d.main:
                        self.log.write(rec)
                    if bar is not None:
                        bar.set_postfix(loss="-" if rec["loss"] is None else f"{rec['loss']:.3f}",
                                        tok_s=f"{rec['tokens_per_s']:.0f}")
                if bar is not None:
                    bar.update(1)
                if self.stop_agreed:
                    self.save(best=new_best)
                    if self.d.main:
                        print(f"gato-train: stopped by SIGTERM at step {self.step}; checkpoint saved in {self.out}",
                              file=sys.stderr)
                    return 0
                if self.step % args.save_every == 0 or last or new_best:
                    self.save(best=new_best)
        finally:
            signal.signal(signal.SIGTERM, previous)
            if bar is not None:
                bar.close()
            if self.d.main:
                self.log.close()
        if self.d.main:
            plot_metrics(self.out / METRICS_NAME, self.out / PLOT_NAME)
            self.store.push()
            print("\n".join([summary(self.out / METRICS_NAME, self.out / CHECKPOINT_NAME, self.tasks)]
                            + self.loader.epoch_lines()))
        return 0

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True


def check_memory(batch_size: int, seq_len: int, vocab_size: int, device: torch.device) -> None:
    """Refuse (UsageError) a --batch-size x --seq-len whose logits alone (with their softmax and
    gradient: three float32 copies) exceed the memory this process may use, before allocating."""
    need = 3 * 4 * batch_size * (seq_len + 1) * vocab_size
    if device.type == "cuda":
        have, where = torch.cuda.get_device_properties(device).total_memory, f"{device} has"
    else:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        have, where = (min(have, soft), "this process may use") if soft != resource.RLIM_INFINITY else \
            (have, "this machine has")
    if need > have:
        raise UsageError(f"--batch-size {batch_size} x --seq-len {seq_len} needs {need / 2**30:.1f} GiB for the logits "
                         f"over {vocab_size} tokens alone; {where} {have / 2**30:.1f} GiB")


def check_fits(sources, seq_len: int) -> None:
    """Refuse (UsageError) directories with a timestep or image-caption pair longer than seq_len:
    a sequence cut inside it has no targets, and training on such data only looks like training."""
    for src in sources:
        tokens, row, source_id = src.longest_unit()
        if tokens > seq_len:
            what = "timestep" if src.kind == "rl" else "image-caption pair"
            raise UsageError(f"{src.path}: row {row}{f' ({source_id})' if source_id else ''} has a {what} of "
                             f"{tokens} tokens, more than --seq-len {seq_len}: no sequence could hold it whole; "
                             f"use --seq-len {tokens} or more, or convert with fewer tokens per {what}")


def train(args: TrainArgs, explicit: set[str] | None = None) -> int:
    """Run (or resume) training; torch.distributed is set up from torchrun's environment."""
    torch.set_flush_denormal(True)
    trainer = Trainer(args, explicit)
    try:
        return trainer.run()
    finally:
        if trainer.d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
