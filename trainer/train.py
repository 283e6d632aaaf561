"""The `gato-train` loop: AdamW, warm-up + cosine, grad clipping and accumulation, DDP, exact resume.

Resuming is exact because everything that decides the next step is in the checkpoint: model and
optimiser state, the step (the schedule is a pure function of it), each rank's loader state and
the RNG states. The loss is a mean over target tokens of the whole global batch (all micro-batches
and ranks), so accumulation and data parallelism do not change what is optimised.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from tokenizer_kit.files import atomic_path

from .checkpoint import CHECKPOINT_NAME, CHECKPOINT_VERSION, read_checkpoint, save_checkpoint
from .model import PRESETS, GatoConfig, GatoModel
from .report import plot_metrics, summary  # noqa: F401 (plot_metrics: part of this module's interface)

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"

# Arguments that define the run; a resume must not change them (it would not continue the run).
FIXED_ARGS = ("data", "preset", "batch_size", "seq_len", "grad_accum", "seed", "lr", "warmup", "weight_decay",
              "min_lr_ratio", "clip", "prompt_prob", "action_noise", "precision", "num_workers")
DEFAULT_LR = {"tiny": 1e-3}  # paper presets: 1e-4 (the paper's peak learning rate)


class TrainError(ValueError):
    """Bad data or a run directory that cannot be continued: one line, exit 1."""


class UsageError(ValueError):
    """Arguments that contradict each other or the run being resumed: exit 2."""


@dataclass
class TrainArgs:
    data: list[str]
    out: str
    preset: str = "tiny"
    steps: int = 1000
    batch_size: int = 8
    seq_len: int = 1024
    lr: float | None = None  # None: the preset's default
    warmup: int | None = None  # None: min(15000, steps // 10)
    grad_accum: int = 1
    seed: int = 0
    weight_decay: float = 0.1
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    prompt_prob: float = 0.25
    action_noise: float = 0.0  # share of continuous action inputs replaced (trainer.batch.ActionInputNoise)
    eval_every: int = 0  # 0: evaluate only at the end
    eval_steps: int = 8
    eval_data: list[str] | None = None
    log_every: int = 10
    save_every: int = 500
    num_workers: int = 0
    compile: bool = False
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    progress: bool = True
    cache_dir: str | None = None  # remote shards and a remote run's staging copy (default ~/.cache/gato-kit)
    cache_limit: int | None = None  # bytes of cached shards kept (least recently used go first)
    init_from: str | None = None  # another run whose weights (and model config) a new run starts from

    def resolve(self) -> "TrainArgs":
        if self.preset not in PRESETS:
            raise UsageError(f"unknown preset {self.preset!r}; expected one of {', '.join(PRESETS)}")
        if self.lr is None:
            self.lr = DEFAULT_LR.get(self.preset, 1e-4)
        if self.warmup is None:
            self.warmup = min(15000, self.steps // 10)
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "log_every", "save_every", "eval_steps"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0.0 <= self.action_noise < 1.0:
            raise UsageError(f"--action-noise must be in [0, 1), not {self.action_noise}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UsageError(f"--precision must be auto, fp32 or bf16, not {self.precision!r}")
        return self


def lr_at(step: int, args: TrainArgs) -> float:
    """Linear warm-up to the peak, then cosine decay to min_lr_ratio of it at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    span = max(1, args.steps - args.warmup)
    progress = min(1.0, (step - args.warmup) / span)
    floor = args.lr * args.min_lr_ratio
    return floor + (args.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _LossModule(nn.Module):
    """Wraps the model so DDP (and torch.compile) see the loss terms as `forward`."""

    def __init__(self, model: GatoModel):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss_terms(batch)


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t


def _setup_dist(device_arg: str) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_arg)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(rank, world, local), device


def _gather(obj, d: _Dist) -> list:
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def _plain(obj):
    """Loader state as plain types/tensors, so the checkpoint loads with weights_only=True."""
    import numpy as np

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

    def __init__(self, args: TrainArgs):
        self.d, self.device = _setup_dist(args.device)
        from schemas.cache import ShardCache, default_cache_dir

        from .run_store import RunStore
        cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
        self.cache = ShardCache(cache_dir / "shards", args.cache_limit)
        self.store = RunStore(args.out, cache_dir, self.d.rank)  # --out a URL: a local copy, uploaded
        self.store.pull()
        self.out = self.store.local
        self.stop_requested = False  # set by SIGTERM on this rank
        self.stop_agreed = False  # some rank was asked to stop: all stop after this step
        ckpt = self._resume_state(args)
        self.args = args.resolve()
        self.use_bf16 = args.precision == "bf16" or (args.precision == "auto" and self.device.type == "cuda")
        torch.manual_seed(args.seed + self.d.rank)

        from .data import build_loader  # the streaming loader (trainer/data.py)

        layout = None
        init = read_checkpoint(args.init_from, map_location="cpu") if ckpt is None and args.init_from else None
        if ckpt is not None or init is not None:
            layout = GatoConfig.from_dict((ckpt or init)["config"]).vocab_layout
        self.loader = build_loader(args.data, args.seq_len, args.batch_size, seed=args.seed,
                                   num_workers=args.num_workers, rank=self.d.rank, world_size=self.d.world,
                                   training=True, prompt_prob=args.prompt_prob, layout=layout, cache=self.cache,
                                   action_noise=args.action_noise)
        self.layout = self.loader.layout
        if layout is not None:
            layout.check_same(self.loader.layout, "the data", "checkpoint")
        check_fits(self.loader.sources, args.seq_len)
        self.tasks = list(self.loader.tasks)
        if ckpt is not None:
            config = GatoConfig.from_dict(ckpt["config"])
        elif init is not None:  # fine-tuning: the other run's model, at this run's context length
            config = GatoConfig.from_dict(init["config"] | {"seq_len": args.seq_len})
        else:
            config = GatoConfig.from_preset(args.preset, self.layout, seq_len=args.seq_len)
        self.config = config
        self.model = GatoModel(config).to(self.device)
        if init is not None:
            self.model.load_state_dict(init["model"])
        self.opt = torch.optim.AdamW(self.model.param_groups(args.weight_decay), lr=args.lr, betas=(0.9, 0.95),
                                     eps=1e-8, fused=self.device.type == "cuda")
        self.step = 0
        if ckpt is not None:
            self._load(ckpt)
        self.loss_module: nn.Module = _LossModule(self.model)
        if self.d.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.loss_module = DDP(self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda"
                                   else None)
        if args.compile:
            # Compile the transformer blocks in place (state-dict keys unchanged). The patch
            # embedding stays eager: inductor mis-strides conv backward on a batch with 0 patches.
            for blk in self.model.blocks:
                blk.compile()

    # --- resume -----------------------------------------------------------------------------------
    def _resume_state(self, args: TrainArgs) -> dict | None:
        """The checkpoint in RUN, with the run's fixed arguments restored (or checked against the CLI)."""
        if not (self.out / CHECKPOINT_NAME).is_file():
            return None
        ckpt = read_checkpoint(self.out / CHECKPOINT_NAME, map_location="cpu")
        saved = ckpt["args"]
        explicit = getattr(args, "_explicit", set(FIXED_ARGS) | {"steps"})
        for name in FIXED_ARGS:
            given, was = getattr(args, name), saved.get(name, getattr(TrainArgs, name, None))  # new since: its default
            if isinstance(was, tuple):
                was = list(was)
            if given is not None and given != was and name in explicit:
                raise UsageError(f"{self.out} was started with --{name.replace('_', '-')} {was}, not {given}; "
                                 f"use another --out to start a new run")
            setattr(args, name, was)
        if "steps" not in explicit:
            args.steps = saved["steps"]
        return ckpt

    def _load(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        loaders = ckpt["loader"]
        try:  # another number of ranks or workers: every rank's state, shared out (elastic resume)
            if len(loaders) != self.d.world or loaders[0].get("num_workers") != self.loader.num_workers:
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
        path = self.out / METRICS_NAME
        if not path.is_file():
            return
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in keep))

    def save(self) -> None:
        """Every rank contributes its loader and RNG state; rank 0 writes the file atomically."""
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        loaders = _gather(_plain(self.loader.state_dict()), self.d)
        rngs = _gather(rng, self.d)
        if self.d.main:
            args = {k: v for k, v in asdict(self.args).items()}
            save_checkpoint({
                "version": CHECKPOINT_VERSION, "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "config": self.config.to_dict(), "args": args,
                "loader": loaders, "rng": rngs, "tasks": self.tasks, "world_size": self.d.world,
            }, self.out / CHECKPOINT_NAME)
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
            ctx = contextlib.nullcontext() if sync else self.loss_module.no_sync()
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
        stats = self.d.all_reduce(torch.cat([stats, stop]))
        self.step += 1
        stats = stats.cpu().tolist()
        # Every rank stops after the same step: only the all-reduced flag decides (a SIGTERM that
        # lands on one rank after its flag was sent is seen at the next step).
        self.stop_agreed = stats[-1] > 0
        # no targets: no loss at all (null in metrics.jsonl), never a mean of nothing that reads as 0.0
        return {"step": self.step, "loss": stats[0] / total if targets > 0 else None, "lr": lr,
                "grad_norm": float(grad_norm), "target_tokens": int(targets),
                "tokens": stats[-2], "task_sums": stats[1:1 + nt], "task_counts": stats[1 + nt:1 + 2 * nt]}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean target-token loss, overall and per task, on `eval_steps` batches of each directory.

        Reads --eval-data (held-out directories) when given, else the training directories; each
        directory gets its own loader in evaluation mode (rows in order, deterministic windows and
        patch positions), so every task is measured, on the same batches at every evaluation.
        """
        from .data import build_loader, parse_data_arg

        args = self.args
        if not hasattr(self, "_eval_loaders"):
            self._eval_loaders, self._eval_names = [], list(self.tasks)
            for item in args.eval_data or args.data:
                loader = build_loader([parse_data_arg(item)[0]], args.seq_len, args.batch_size, seed=args.seed,
                                      rank=self.d.rank, world_size=self.d.world, training=False,
                                      prompt_prob=args.prompt_prob, layout=self.layout, cache=self.cache)
                self._eval_names += [n for n in loader.tasks if n not in self._eval_names]
                task_map = torch.tensor([self._eval_names.index(n) for n in loader.tasks], dtype=torch.int64)
                self._eval_loaders.append((loader, task_map.to(self.device)))
        ne = len(self._eval_names)
        stats = torch.zeros(2 * ne, device=self.device)
        self.model.eval()
        for loader, task_map in self._eval_loaders:
            for b in islice(iter(loader), args.eval_steps):
                b = b.to(self.device)
                with self._autocast():
                    s, n = self.model.loss_terms(b)
                tid = task_map[b.task_id]
                stats[:ne].index_add_(0, tid, s.float())
                stats[ne:].index_add_(0, tid, n.float())
        self.model.train()
        stats = self.d.all_reduce(stats).cpu().tolist()
        out = {}
        total_s, total_n = sum(stats[:ne]), sum(stats[ne:])
        if total_n > 0:
            out["eval_loss"] = total_s / total_n
        for t, name in enumerate(self._eval_names):
            if stats[ne + t] > 0:
                out[f"eval_loss/{name}"] = stats[t] / stats[ne + t]
        return out

    # --- the loop ---------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        with open(self.out / METRICS_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")

    def run(self) -> int:
        args = self.args
        if self.d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.step == 0:
                self._truncate_metrics(0)  # records of an earlier attempt that never checkpointed
            (self.out / "config.json").write_text(json.dumps({"model": self.config.to_dict(), "train": asdict(args),
                                                             "tasks": self.tasks}, indent=1) + "\n")
        self.model.train()
        self._it = iter(self.loader)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        if self.d.main and self.step > 0:
            print(f"gato-train: resumed from step {self.step} of {args.steps} in {self.out}", file=sys.stderr)
        bar = None
        if self.d.main and args.progress:
            from tqdm import tqdm
            bar = tqdm(total=args.steps, initial=self.step, desc="gato-train", unit="step", dynamic_ncols=True)
        try:
            t0, tokens = time.perf_counter(), 0.0
            task_sums, task_counts = [0.0] * len(self.tasks), [0.0] * len(self.tasks)
            while self.step < args.steps:
                rec = self.train_step()
                tokens += rec.pop("tokens")
                # Per-task losses are averaged over the steps since the last record (one step's
                # batch rarely holds every task).
                task_sums = [a + b for a, b in zip(task_sums, rec.pop("task_sums"), strict=True)]
                task_counts = [a + b for a, b in zip(task_counts, rec.pop("task_counts"), strict=True)]
                last = self.step == args.steps
                do_eval = last or (args.eval_every and self.step % args.eval_every == 0)
                if self.step % args.log_every == 0 or last or do_eval:
                    dt = time.perf_counter() - t0
                    rec["tokens_per_s"] = tokens / dt if dt > 0 else 0.0
                    rec["tokens"] = tokens
                    t0, tokens = time.perf_counter(), 0.0
                    for name, ts, tc in zip(self.tasks, task_sums, task_counts, strict=True):
                        rec[f"target_tokens/{name}"] = int(tc)  # since the last record
                        if tc > 0:
                            rec[f"loss/{name}"] = ts / tc
                    task_sums, task_counts = [0.0] * len(self.tasks), [0.0] * len(self.tasks)
                    if do_eval:
                        rec.update(self.evaluate())
                    if self.d.main:
                        self._log(rec)
                    if bar is not None:
                        bar.set_postfix(loss="-" if rec["loss"] is None else f"{rec['loss']:.3f}",
                                        tok_s=f"{rec['tokens_per_s']:.0f}")
                if bar is not None:
                    bar.update(1)
                if self.stop_agreed:
                    self.save()
                    if self.d.main:
                        print(f"gato-train: stopped by SIGTERM at step {self.step}; checkpoint saved in {self.out}",
                              file=sys.stderr)
                    return 0
                if self.step % args.save_every == 0 or last:
                    self.save()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if bar is not None:
                bar.close()
        if self.d.main:
            plot_metrics(self.out / METRICS_NAME, self.out / PLOT_NAME)
            self.store.push()
            print(summary(self.out / METRICS_NAME, self.out / CHECKPOINT_NAME, self.tasks))
        return 0

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True


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


def train(args: TrainArgs) -> int:
    """Run (or resume) training; torch.distributed is set up from torchrun's environment."""
    torch.set_flush_denormal(True)
    trainer = Trainer(args)
    try:
        return trainer.run()
    finally:
        if trainer.d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
