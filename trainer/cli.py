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

SUBCOMMANDS = {  # name -> (module, entry point)
    "rollout": ("trainer.acting.evaluate", "rollout_main"),
    "eval": ("trainer.acting.evaluate", "eval_main"),
    "generate": ("trainer.acting.generate", "generate_main"),
    "caption": ("trainer.acting.generate", "caption_main"),
}


def _arg_type(f, options: type):
    """The command line's parser of option field `f` of the dataclass `options`: its type, then
    the one range check (run_config.check_value); a field's own `parse` for a value with its own syntax."""
    from .run_config import UsageError, check_value, type_name

    if f.metadata["parse"] is not None:
        return f.metadata["parse"]
    name, kind, size = f.name, type_name(f), f.metadata["size"]

    def parse(text: str):
        value = text
        if kind.startswith("int") and not size:
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        elif kind.startswith("float"):
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        try:
            if kind.startswith("list"):  # one item of a list option
                return check_value(name, [value], options)[0]
            return check_value(name, value, options)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = name
    return parse


def add_options(p: argparse.ArgumentParser, options: type, defaults: bool = False) -> None:
    """One argument per field of the dataclass `options` (run_config.opt: default, range, help
    defined there only): `--name` (`--no-name` for a flag that is on by default), a list takes
    one or more values, a positional field its bare values. `defaults`: an option not given takes
    its field's default (else it is absent, the parser's argument_default)."""
    import dataclasses

    from .run_config import flag, type_name

    for f in dataclasses.fields(options):
        m = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = m["help"] + ("" if default in (None, [], "") or "default" in m["help"] or m["required"] or
                            m["positional"] else f" (default {default})")
        if m["cli"] == "flag":
            if default:
                p.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false", help=text)
            else:
                p.add_argument(flag(f.name), action="store_true", help=text)
            continue
        kw: dict = {"nargs": "+"} if m["cli"] == "list" else {}
        if defaults:
            kw["default"] = default
        if m["choices"] is not None:
            kw["choices"] = m["choices"]
        else:
            kw["type"] = _arg_type(f, options)
        kind = type_name(f)
        metavar = m["metavar"] or (None if m["choices"] else "N" if kind.startswith("int") else
                                   "X" if kind.startswith("float") else "VALUE")
        if m["positional"]:
            p.add_argument(f.name, metavar=metavar, help=text, **kw)
        else:
            p.add_argument(flag(f.name), metavar=metavar, help=text, required=m["required"], **kw)


def build_parser() -> argparse.ArgumentParser:
    """Built from the fields of run_config.TrainArgs (default, range, help defined there only); an
    option not given is absent from the namespace, so --config and the run being resumed fill it."""
    from .run_config import TrainArgs

    doc = __doc__.split("\n\n")
    p = argparse.ArgumentParser(prog="gato-train", description=doc[0], epilog=doc[1], allow_abbrev=False,
                                argument_default=argparse.SUPPRESS,
                                usage="%(prog)s --data DIR[:W] ... --out RUN [options]\n"
                                      "       %(prog)s --config run.yaml [options]\n"
                                      "       %(prog)s {" + ",".join(SUBCOMMANDS) + "} --checkpoint RUN ...",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="RUN.YAML", help="a YAML file of options (keys as the long options, "
                   "`batch_size: 8`); options given on the command line override it")
    add_options(p, TrainArgs)
    return p


def options_parser(options: type, prog: str, description: str) -> argparse.ArgumentParser:
    """A subcommand's parser, built from its options dataclass as the main command's is from TrainArgs."""
    p = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    add_options(p, options, defaults=True)
    return p


def parse_options(options: type, prog: str, description: str, argv: list[str] | None):
    """The subcommand's options (a dataclass instance) from its command line; exit 2 on bad usage."""
    return options(**vars(options_parser(options, prog, description).parse_args(argv)))


def args_from_namespace(ns: argparse.Namespace, parser: argparse.ArgumentParser | None = None):
    """TrainArgs from the defaults, then --config, then the command line. Which options were given
    (in either) is kept: the run-defining ones not given come from the run being resumed."""
    from .run_config import TrainArgs, read_yaml_config

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

    from .run_config import RunConfigError
    try:
        args, explicit = args_from_namespace(ns, parser)
    except RunConfigError as e:  # a bad --config file: bad usage
        parser.print_usage(sys.stderr)
        print(f"gato-train: error: {e}", file=sys.stderr)
        return 2

    from .checkpoint import CheckpointError
    from .source import DataError
    from .train import TrainError, UsageError, train

    expected = EXPECTED_ERRORS + (TrainError, CheckpointError, DataError, RunConfigError)
    try:
        _check_out(args.out)
        return train(args, explicit)
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
