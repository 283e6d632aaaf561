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
import importlib
import os
import sys
from pathlib import Path

import torch

from schemas.names import redact_std_streams
from tokenizer_kit.errors import run_command
from tokenizer_kit.options import add_options, from_namespace

from .checkpoint import CheckpointError
from .run_config import RunConfigError, TrainArgs, UsageError, check_value, read_yaml_config

SUBCOMMANDS = {  # name -> (module, entry point)
    "rollout": ("trainer.acting.evaluate", "rollout_main"),
    "eval": ("trainer.acting.evaluate", "eval_main"),
    "generate": ("trainer.acting.generate", "generate_main"),
    "caption": ("trainer.acting.generate", "caption_main"),
}


def build_parser() -> argparse.ArgumentParser:
    """Built from the fields of run_config.TrainArgs (default, range, help defined there only); an
    option not given is absent from the namespace, so --config and the run being resumed fill it."""
    doc = __doc__.split("\n\n")
    p = argparse.ArgumentParser(prog="gato-train", description=doc[0], epilog=doc[1], allow_abbrev=False,
                                argument_default=argparse.SUPPRESS,
                                usage="%(prog)s --data DIR[:W] ... --out RUN [options]\n"
                                      "       %(prog)s --config run.yaml [options]\n"
                                      "       %(prog)s {" + ",".join(SUBCOMMANDS) + "} --checkpoint RUN ...",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="RUN.YAML", help="a YAML file of options (keys as the long options, "
                   "`batch_size: 8`); options given on the command line override it")
    add_options(p, TrainArgs, check=lambda f, value: check_value(f.name, value))
    return p


def options_parser(options: type, prog: str, description: str) -> argparse.ArgumentParser:
    """A subcommand's parser, built from its options dataclass as the main command's is from TrainArgs."""
    p = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    add_options(p, options, check=lambda f, value: check_value(f.name, value, options))
    return p


def parse_options(options: type, prog: str, description: str, argv: list[str] | None):
    """The subcommand's options (a dataclass instance) from its command line; exit 2 on bad usage."""
    return from_namespace(options, options_parser(options, prog, description).parse_args(argv))


def args_from_namespace(ns: argparse.Namespace, parser: argparse.ArgumentParser | None = None):
    """TrainArgs from the defaults, then --config, then the command line. Which options were given
    (in either) is kept: the run-defining ones not given come from the run being resumed."""
    given = dict(vars(ns))
    config = given.pop("config", None)
    values = read_yaml_config(config) if config else {}
    values.update(given)
    if parser is not None:
        for name in ("data", "out"):
            if not values.get(name):
                parser.error(f"the following arguments are required: --{name}")
    return TrainArgs(**values), set(values)


def main(argv: list[str] | None = None) -> int:
    redact_std_streams()  # credentials in a URL never reach a message
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in SUBCOMMANDS:
        module, entry = SUBCOMMANDS[argv[0]]
        return getattr(importlib.import_module(module), entry)(argv[1:])
    parser = build_parser()
    ns = parser.parse_args(argv)
    from schemas.errors import EXPECTED_ERRORS  # noqa: PLC0415 - start-up: pyarrow (schemas.manifest), not loaded by `--help`

    try:
        args, explicit = args_from_namespace(ns, parser)
    except RunConfigError as e:  # a bad --config file: bad usage
        parser.print_usage(sys.stderr)
        print(f"gato-train: error: {e}", file=sys.stderr)
        return 2

    from .source import DataError  # noqa: PLC0415 - start-up: pyarrow, not loaded by `gato-train --help`
    from .train import TrainError, train  # noqa: PLC0415 - start-up: the training stack loads only to train

    def work() -> int:
        _check_out(args.out)
        return train(args, explicit)

    return run_command("gato-train", work, EXPECTED_ERRORS + (TrainError, CheckpointError, DataError, RunConfigError),
                       usage=(UsageError,), print_usage=lambda: parser.print_usage(sys.stderr),
                       out_of_memory=(MemoryError, torch_oom()), memory_hint="lower --batch-size or --seq-len")


def _check_out(out: str) -> None:
    """--out must be a directory or nothing yet (a local one: not a file, not a dangling symlink)."""
    from schemas.storage import is_remote, local_path  # noqa: PLC0415 - start-up: fsspec, not loaded by `--help`

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
    return torch.OutOfMemoryError


if __name__ == "__main__":
    sys.exit(main())
