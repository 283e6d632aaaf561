"""`gato-train`: train a Gato model on shard directories; re-running with the same --out resumes.

Subcommands use a trained run (RUN = its --out directory):
  gato-train rollout  --checkpoint RUN --data SHARDS --env ID   act in one task
  gato-train eval     --checkpoint RUN --suite suite.yaml       act in a suite of tasks, normalised scores
  gato-train generate --checkpoint RUN --prompt TEXT            continue a text
  gato-train caption  --checkpoint RUN IMAGE...                 caption images

Exit codes: 0 ok (also after SIGTERM, once a checkpoint is saved), 1 bad data or run directory
(one-line reason), 2 bad usage. Runs under `torchrun --nproc-per-node N` with DDP.
"""

from __future__ import annotations

import argparse
import os
import sys

from .model import PRESETS


def learning_rate(text: str) -> float:
    """A peak learning rate: above 0 and at most 10 (1e300 overflows the optimiser's float32 state)."""
    from tokenizer_kit.argtypes import positive_float
    x = positive_float(text)
    if not x <= 10.0:
        raise argparse.ArgumentTypeError(f"must be at most 10, got {text}")
    return x


def _data_item(text: str) -> str:
    """A bad mixture weight (`DIR:-1`) is bad usage, found by the loader's own rule."""
    from .data import parse_data_arg
    from .source import DataError
    try:
        parse_data_arg(text)
    except DataError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


SUBCOMMANDS = {  # name -> (module, entry point)
    "rollout": ("trainer.evaluate", "rollout_main"),
    "eval": ("trainer.evaluate", "eval_main"),
    "generate": ("trainer.generate", "generate_main"),
    "caption": ("trainer.generate", "caption_main"),
}


def build_parser() -> argparse.ArgumentParser:
    from tokenizer_kit.argtypes import (byte_size, nonnegative_float, nonnegative_int, positive_float, positive_int,
                                        probability)

    from .devices import device_arg

    doc = __doc__.split("\n\n")
    p = argparse.ArgumentParser(prog="gato-train", description=doc[0], epilog=doc[1],
                                usage="%(prog)s --data DIR[:W] ... --out RUN [options]\n"
                                      "       %(prog)s {" + ",".join(SUBCOMMANDS) + "} --checkpoint RUN ...",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, metavar="DIR[:W]", type=_data_item,
                   help="shard directories (paths or URLs: s3://, gs://, file://), each with an optional "
                        "mixture weight (tokens)")
    p.add_argument("--out", required=True, metavar="RUN",
                   help="run directory, a path or a URL (checkpoint, metrics.jsonl, loss.png)")
    p.add_argument("--cache-dir", metavar="DIR", help="local cache of shards read from URLs, and the staging "
                   "copy of a URL --out (default $XDG_CACHE_HOME/gato-kit or ~/.cache/gato-kit)")
    p.add_argument("--cache-limit", type=byte_size, metavar="BYTES",
                   help="most bytes of shards kept in the cache (e.g. 50G); least recently used go first")
    p.add_argument("--preset", choices=sorted(PRESETS), help="model size (default tiny)")
    p.add_argument("--init-from", metavar="RUN", help="start from another run's weights (its model size and "
                                                      "vocabulary; a fresh optimiser and schedule)")
    p.add_argument("--steps", type=positive_int, help="optimiser steps in total (default 1000)")
    p.add_argument("--batch-size", type=positive_int, help="sequences per micro-batch per process (default 8)")
    p.add_argument("--seq-len", type=positive_int, help="tokens per sequence (default 1024)")
    p.add_argument("--lr", type=learning_rate, help="peak learning rate, in (0, 10] (default 1e-3 tiny, 1e-4 paper "
                                                     "sizes)")
    p.add_argument("--warmup", type=nonnegative_int, help="linear warm-up steps (default min(15000, steps/10))")
    p.add_argument("--grad-accum", type=positive_int, help="micro-batches per optimiser step (default 1)")
    p.add_argument("--seed", type=nonnegative_int, help="seed of data order and init (default 0)")
    p.add_argument("--weight-decay", type=nonnegative_float, help="AdamW weight decay on matrices (default 0.1)")
    p.add_argument("--prompt-prob", type=probability, help="fraction of RL sequences given a prompt (default 0.25)")
    p.add_argument("--action-noise", type=probability, metavar="SHARE",
                   help="in training inputs (never targets), replace this share of continuous action tokens by "
                        "other action tokens of the batch: a guard against copying past actions (default 0)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="bf16 autocast or fp32 (default auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--eval-every", type=nonnegative_int, default=0, help="evaluate every N steps (default 0: at the end)")
    p.add_argument("--eval-steps", type=positive_int, default=8, help="batches per evaluation (default 8)")
    p.add_argument("--eval-data", nargs="+", metavar="DIR",
                   help="held-out shard directories (default: the training directories in eval mode)")
    p.add_argument("--log-every", type=positive_int, default=10, help="write metrics every N steps (default 10)")
    p.add_argument("--save-every", type=positive_int, default=500, help="checkpoint every N steps (default 500)")
    p.add_argument("--num-workers", type=nonnegative_int, help="loader worker processes per rank (default 0)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default="auto", type=device_arg, help="cpu, cuda, cuda:N (default auto)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar")
    return p


def args_from_namespace(ns: argparse.Namespace):
    """TrainArgs from the command line; which run-defining options were given (train.FIXED_ARGS, and
    --steps, which a resume may extend) is kept, since the others come from the run being resumed."""
    from .train import FIXED_ARGS, TrainArgs

    explicit = {k for k in (*FIXED_ARGS, "steps") if getattr(ns, k, None) is not None}
    values = {k: v for k, v in vars(ns).items() if v is not None}
    args = TrainArgs(**values)
    args._explicit = explicit
    return args


def main(argv: list[str] | None = None) -> int:
    from schemas.names import redact_std_streams
    redact_std_streams()  # credentials in a URL never reach a message
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in SUBCOMMANDS:
        import importlib
        module, entry = SUBCOMMANDS[argv[0]]
        return getattr(importlib.import_module(module), entry)(argv[1:])
    parser = build_parser()
    ns = parser.parse_args(argv)
    from schemas.errors import EXPECTED_ERRORS

    from .checkpoint import CheckpointError
    from .source import DataError
    from .train import TrainError, UsageError, train

    expected = EXPECTED_ERRORS + (TrainError, CheckpointError, DataError)
    try:
        _check_out(ns.out)
        return train(args_from_namespace(ns))
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"gato-train: error: {e}", file=sys.stderr)
        return 2
    except expected as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"gato-train: error: {msg}", file=sys.stderr)
        return 1
    except OSError as e:  # --out a file, read-only, a full disk: the system's reason, one line
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        reason = e.strerror or (str(e).splitlines() or [type(e).__name__])[0]
        print(f"gato-train: error: {where}{reason}", file=sys.stderr)
        return 1
    except (MemoryError, torch_oom()) as e:
        print(f"gato-train: error: out of memory ({(str(e).splitlines() or [type(e).__name__])[0][:200]}); "
              "lower --batch-size or --seq-len", file=sys.stderr)
        return 1
    except RuntimeError as e:  # torch's CPU allocator says "can't allocate memory" as a RuntimeError
        if "allocate" not in str(e):
            raise
        print(f"gato-train: error: out of memory ({(str(e).splitlines() or [type(e).__name__])[0][:200]}); "
              "lower --batch-size or --seq-len", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gato-train: interrupted", file=sys.stderr)
        return 130


def _check_out(out: str) -> None:
    """--out must be a directory or nothing yet (a local one: not a file, not a dangling symlink)."""
    from pathlib import Path

    from schemas.storage import is_remote, local_path

    from .train import UsageError
    if is_remote(out):
        return
    p = local_path(out)
    if p.is_symlink() and not p.exists():
        raise UsageError(f"--out {out}: a dangling symlink (to {os.readlink(p)})")
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    parent = next((q for q in [p, *p.parents] if q.exists()), Path("."))
    if not os.access(parent, os.W_OK) and not (p.is_dir() and os.access(p, os.W_OK)):
        raise UsageError(f"--out {out}: {parent} is not writable")


def torch_oom() -> type[BaseException]:
    import torch
    return torch.OutOfMemoryError


if __name__ == "__main__":
    sys.exit(main())
