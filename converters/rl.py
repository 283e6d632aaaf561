"""`gato-tokenize rl`: episodes of Minari datasets, D4RL-style HDF5 files and episode tables -> rows.

Readers (converters/rl_sources) turn each format into flat named fields with T steps each; this
module decides how every field is tokenised (an `EpisodeSpec`, recorded in the manifest so rows
decode back), and makes the converter (converters/rl_converter.py), which filters episodes by
return and builds one row per episode with `tokenizer_kit.sequence.build_episode`. Observations
are mu-law companded; continuous actions are rescaled to [-1, 1] from their declared bounds where
there are any, and values still outside are counted (SPEC 2 clips them). Frame stacks become grey
frames (tokenizer_kit.frames).
Work units are contiguous episode ranges of one input, so workers share a dataset and the order
of rows is deterministic.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tokenizer_kit.argtypes import image_size
from tokenizer_kit.frames import MODES as FRAME_MODES
from tokenizer_kit.frames import detect as detect_stack
from tokenizer_kit.images import FIT_POLICIES, fitted_size
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.sequence import KINDS, EpisodeSpec, FieldSpec

from .base import SourceError
from .rl_converter import STEPS_PER_UNIT, RLConverter
from .rl_sources import SOURCE_KINDS, FieldInfo, Source, expand_inputs, open_source

IGNORE = "ignore"


# --- options ---------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """RL options (the common ones, --out, --workers, --task..., are added by the convert command)."""
    g = parser.add_argument_group("rl", "INPUT: a Minari dataset directory or local dataset id, a LeRobot or RLDS "
                                        "folder, a D4RL-style .hdf5 file, a .parquet file, a folder of either, or a "
                                        "HF datasets directory")
    g.add_argument("--source", choices=SOURCE_KINDS, default="auto",
                   help="reader to use (default: guessed from each input)")
    g.add_argument("--field", action="append", default=[], type=_pair, metavar="NAME=KIND",
                   help=f"tokenise field NAME as KIND ({', '.join(KINDS)}, or {IGNORE} to leave it out); "
                        "repeatable. Names: obs, obs/KEY, action, action/KEY, or a table's column")
    g.add_argument("--mu-law", action="append", default=[], type=_pair, metavar="NAME=on|off",
                   help="mu-law companding of a continuous observation field (default on; actions never)")
    g.add_argument("--min-return", type=float, default=None, metavar="X",
                   help="keep only episodes whose return (sum of rewards) is >= X")
    g.add_argument("--min-return-fraction", type=float, default=None, metavar="F",
                   help="keep only episodes with return >= F * the best episode return of their input "
                        "(Gato kept >= 0.8 of the expert's); needs a positive best return")
    g.add_argument("--steps-per-unit", type=int, default=STEPS_PER_UNIT, metavar="N",
                   help=f"a work unit is a run of whole episodes with about N steps (default {STEPS_PER_UNIT})")
    g.add_argument("--episodes-per-unit", type=int, default=None, metavar="N",
                   help="exactly N episodes per work unit instead")
    g.add_argument("--image-fit", choices=FIT_POLICIES, default="resize",
                   help="image sides that are not multiples of 16: resize (default) or pad")
    g.add_argument("--image-size", type=_image_size, default=None, metavar="HxW",
                   help="fit every image observation to HxW pixels (multiples of 16; default: the "
                        "nearest multiples of 16 of the dataset's frames)")
    g.add_argument("--action-local-pos", action="store_true",
                   help="give action tokens one shared local position (default: none, as in the paper)")
    g.add_argument("--frame-stack", choices=FRAME_MODES, default="auto",
                   help="image observations that stack grey frames ((C,H,W), or (H,W,C) with C not 1 or 3): "
                        "last keeps each step's newest frame, split keeps every frame as its own image (oldest "
                        "first), auto (default) takes last for episodes where it loses nothing, else split")
    g.add_argument("--action-bounds", action="append", default=[], type=_pair, metavar="NAME=LOW:HIGH",
                   help="declared range of continuous action NAME: rescaled from it to [-1, 1] (default: the "
                        "bounds the source declares, e.g. a Minari Box; none: values are taken as they are)")
    g.add_argument("--strict-ranges", action="store_true",
                   help="an episode with continuous actions outside [-1, 1] (after rescaling) is a bad record "
                        "(skipped, or an error with --on-error fail) instead of a warning")
    g.add_argument("--allow-hdf5-external-files", action="store_true",
                   help="let HDF5 external storage, external links and virtual datasets read other files on this "
                        "machine (refused by default: a hostile file can pull any local file into the shards)")
    g.add_argument("--split", default="train", metavar="NAME",
                   help="a folder of HF hub table shards (the jat-dataset's <task>/<split>-00000-of-00004.parquet) is "
                        "read as its NAME split (default train); its task is the folder's name")
    g.add_argument("--env-spec", default=None, type=_env_spec, metavar="JSON|FILE.json|ID",
                   help="the environment the episodes were recorded in, recorded in the manifest for acting: "
                        "an id, or {\"id\": ..., \"kwargs\": {...}, \"wrappers\": [{\"entry_point\": "
                        "\"gymnasium.wrappers:AtariPreprocessing\", \"kwargs\": {...}}, ...]} inline or in a file "
                        "(default: a Minari dataset's own env spec)")
    g.add_argument("--repeated-text-loss", action="store_true",
                   help="keep a text observation that repeats the previous step's text (a mission given every "
                        "step) a training target; default: only its first occurrence in an episode is")
    g.add_argument("--field-loss", action="append", default=[], type=_pair, metavar="NAME=on|off",
                   help="off: a text observation NAME stays in the context but is no training target "
                        "(e.g. a mission repeated at every step)")


_image_size = image_size  # the one --image-size syntax (tokenizer_kit.argtypes)


def _env_spec(text: str):
    """--env-spec as a checked schemas.env_spec.EnvSpec: bad usage before anything is read."""
    from schemas.env_spec import EnvSpec, EnvSpecError
    try:
        return EnvSpec.parse(text)
    except EnvSpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.rpartition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


class RLUsageError(SystemExit):
    """Bad usage found once the inputs are open (unknown --field name...): exit 2 with one line."""


_PARSER: list = []  # the subcommand's parser while make_converter runs, for parser.error


def _usage(message: str):
    """Bad usage: one line and exit 2, as argparse does."""
    if _PARSER and _PARSER[-1] is not None:
        _PARSER[-1].error(message)
    prog = Path(sys.argv[0]).name or "gato-tokenize"
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise RLUsageError(2)


def _inputs(args) -> list[str]:
    for name in ("inputs", "input", "paths"):
        value = getattr(args, name, None)
        if value:
            return [value] if isinstance(value, str) else list(value)
    _usage("rl: no INPUT given")


def _layout_and_tokenizer(args):
    """The convert command puts both on args; built here from the options when called directly."""
    from tokenizer_kit.text import TextTokenizer
    if getattr(args, "layout", None) is not None:
        return args.layout, getattr(args, "tokenizer", None)
    profile = getattr(args, "layout_profile", None) or "gato"
    path = getattr(args, "text_tokenizer", None)
    if path:
        tok = TextTokenizer(path)
        return tok.layout(profile), tok
    return VocabLayout(text_vocab_size=getattr(args, "text_vocab_size", None) or 32000, profile=profile), None


# --- the spec ----------------------------------------------------------------------------------

def build_spec(obs: dict[str, FieldInfo], act: dict[str, FieldInfo], kinds: dict[str, str],
               mu_law: dict[str, bool], image_fit: str = "resize", action_local_pos: bool = False,
               image_size: tuple[int, int] | None = None, field_loss: dict[str, bool] | None = None,
               action_bounds: dict[str, tuple[float, float]] | None = None,
               repeated_text_loss: bool = False) -> EpisodeSpec:
    """Fields as the reader found them, with --field, --mu-law, --field-loss and --action-bounds
    applied. An image field whose steps stack grey frames keeps that stack's geometry; a continuous
    action field with declared finite bounds other than [-1, 1] is rescaled from them."""
    field_loss, action_bounds = field_loss or {}, action_bounds or {}

    def spec(info: FieldInfo, is_obs: bool) -> FieldSpec | None:
        kind = kinds.get(info.name, info.kind)
        if kind == IGNORE:
            return None
        shape, stack, bounds = info.shape, None, None
        if kind == "image":
            if not is_obs:
                _usage(f"field {info.name!r}: actions cannot be images")
            stack = detect_stack(shape, np.uint8)
            if stack is not None:
                shape = (stack.height, stack.width)
            if image_size is not None:
                shape = tuple(image_size)
            elif shape is None or len(shape) < 2:
                shape = None  # frames of several sizes: each fitted to its own multiple of 16
            else:  # every step fitted to one size, so all rows of a task have as many patches
                shape = fitted_size(shape[0], shape[1], image_fit)
        elif kind == "text":
            shape = None
        if kind == "continuous" and not is_obs:
            bounds = action_bounds.get(info.name, info.bounds)
            if bounds is not None and all(lo == -1.0 for lo in bounds[0]) and all(hi == 1.0 for hi in bounds[1]):
                bounds = None  # already the bins' range: nothing to rescale
        return FieldSpec(info.name, kind, shape, is_obs and mu_law.get(info.name, True), image_fit, stack,
                         field_loss.get(info.name, True), bounds, is_obs and kind == "text" and repeated_text_loss)

    observations = tuple(f for f in (spec(i, True) for i in obs.values()) if f is not None)
    actions = tuple(f for f in (spec(i, False) for i in act.values()) if f is not None)
    if not observations or not actions:
        _usage("rl: every episode needs at least one observation field and one action field")
    return EpisodeSpec(observations, actions, action_local_pos)


def _check_overrides(known: dict[str, FieldInfo], act: dict[str, FieldInfo], kinds: dict, mu_law: dict,
                     field_loss: dict | None = None, action_bounds: dict | None = None) -> None:
    names = sorted(known)
    for name in field_loss or {}:
        if name not in known:
            _usage(f"--field-loss {name}: no field {name!r} (fields: {', '.join(names)})")
        if name in act or kinds.get(name, known[name].kind) != "text":
            _usage(f"--field-loss {name}: only text observations can be kept out of the loss "
                   f"(actions are always targets, other observations never)")
    for name in action_bounds or {}:
        if name not in act or kinds.get(name, act[name].kind) != "continuous":
            _usage(f"--action-bounds {name}: not a continuous action field (actions: {', '.join(sorted(act))})")
    for name, kind in kinds.items():
        if name not in known:
            _usage(f"--field {name}={kind}: no field {name!r} (fields: {', '.join(names)})")
        if kind not in KINDS + (IGNORE,):
            _usage(f"--field {name}={kind}: unknown kind (expected one of {', '.join(KINDS + (IGNORE,))})")
    for name in mu_law:
        if name not in known:
            _usage(f"--mu-law {name}: no field {name!r} (fields: {', '.join(names)})")
        if name in act:
            _usage(f"--mu-law {name}: actions are never companded (SPEC 2: they are clipped to [-1, 1])")


def make_converter(args) -> RLConverter:
    """Open every input (cheap: metadata and flags only), agree on one EpisodeSpec, plan filters."""
    _PARSER.append(getattr(args, "_parser", None))
    try:
        return _make_converter(args)
    finally:
        _PARSER.pop()


def _make_converter(args) -> RLConverter:
    layout, tok = _layout_and_tokenizer(args)
    kind = getattr(args, "source", "auto") or "auto"
    inputs = expand_inputs(_inputs(args), getattr(args, "split", "train") or "train")
    external = bool(getattr(args, "allow_hdf5_external_files", False))
    sources, _ = _open_sources(inputs, kind, getattr(args, "on_error", "fail") == "skip", external)
    obs, act = sources[0].fields()
    for other in sources[1:]:
        if other.fields() != (obs, act):
            raise SourceError(f"{other.path}: fields {_describe(other.fields())} differ from those of "
                              f"{sources[0].path}: {_describe((obs, act))}")
    kinds = dict(getattr(args, "field", None) or [])
    mu_law = {}
    for name, value in getattr(args, "mu_law", None) or []:
        if value.lower() not in ("on", "off"):
            _usage(f"--mu-law {name}={value}: expected on or off")
        mu_law[name] = value.lower() == "on"
    field_loss = {}
    for name, value in getattr(args, "field_loss", None) or []:
        if value.lower() not in ("on", "off"):
            _usage(f"--field-loss {name}={value}: expected on or off")
        field_loss[name] = value.lower() == "on"
    bounds = {}
    for name, value in getattr(args, "action_bounds", None) or []:
        low, _, high = value.partition(":")
        try:
            lo, hi = float(low), float(high)
        except ValueError:
            lo = hi = float("nan")
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            _usage(f"--action-bounds {name}={value}: expected LOW:HIGH, finite numbers with LOW < HIGH")
        bounds[name] = ((lo,), (hi,))
    _check_overrides({**obs, **act}, act, kinds, mu_law, field_loss, bounds)
    fit = getattr(args, "image_fit", "resize")
    image_size = getattr(args, "image_size", None)
    spec = build_spec(obs, act, kinds, mu_law, fit, bool(getattr(args, "action_local_pos", False)), image_size,
                      field_loss, bounds, bool(getattr(args, "repeated_text_loss", False)))
    text = [f.name for f in spec.observations + spec.actions if f.kind == "text"]
    if text and tok is None:
        _usage(f"field {text[0]!r} is text: pass --text-tokenizer MODEL (or --field {text[0]}=ignore)")
    per_unit = getattr(args, "episodes_per_unit", None)
    steps_per_unit = getattr(args, "steps_per_unit", STEPS_PER_UNIT)
    if (per_unit is not None and per_unit < 1) or steps_per_unit < 1:
        _usage("--episodes-per-unit and --steps-per-unit must be at least 1")
    thresholds = {}
    floor, fraction = getattr(args, "min_return", None), getattr(args, "min_return_fraction", None)
    for src in sources:
        t = floor
        if fraction is not None:
            returns = src.returns()
            best = float(returns.max()) if len(returns) else 0.0
            if best <= 0:
                _usage(f"--min-return-fraction: the best return of {src.path} is {best:g}, not positive; "
                       f"use --min-return")
            t = fraction * best if t is None else max(t, fraction * best)
        if t is not None:
            thresholds[src.input] = t
    conv = RLConverter(inputs, spec, layout, source_kind=kind, text_tokenizer=tok,
                       task=getattr(args, "task", None), min_return=thresholds, episodes_per_unit=per_unit,
                       steps_per_unit=steps_per_unit,
                       settings={"fields": kinds or None, "mu_law": mu_law or None, "image_fit": fit,
                                 "min_return_fraction": fraction},
                       frame_stack=getattr(args, "frame_stack", "auto") or "auto",
                       strict_ranges=bool(getattr(args, "strict_ranges", False)), allow_hdf5_external=external,
                       env_spec=recorded_env(args, sources))
    conv._sources = {s.input: s for s in sources}
    for src in sources:
        if getattr(src, "last_episode_cut", False):
            print(f"gato-tokenize rl: warning: {src.path}: the last episode ({int(src.episode_lengths()[-1])} steps) "
                  f"has no terminal or timeout flag; taken whole, as a cut-off episode", file=sys.stderr)
    return conv


def recorded_env(args: argparse.Namespace, sources: list[Source]):
    """The environment to record in the manifest: --env-spec, else the inputs' own (a Minari
    dataset's env spec) when they all have the same one, else none (acting then makes --env as it is)."""
    given = getattr(args, "env_spec", None)
    if given is not None:
        return given
    specs = [s.env_spec for s in sources]
    if specs and all(v is not None and v == specs[0] for v in specs):
        return specs[0]
    return None


def _open_sources(inputs: list[str], kind: str, skip: bool,
                  allow_hdf5_external: bool = False) -> tuple[list[Source], list[str]]:
    """Readers of the inputs; under --on-error skip an unreadable input is kept aside (its work unit
    fails when converted, so it is listed as skipped) as long as one input can be read."""
    sources, unreadable, first = [], [], None
    for p in inputs:
        try:
            sources.append(open_source(p, kind, allow_hdf5_external))
        except SourceError as e:
            if not skip:
                raise
            unreadable.append(p)
            first = first or e
    if not sources and first is not None:
        raise first
    return sources, unreadable


def _describe(fields: tuple[dict[str, FieldInfo], dict[str, FieldInfo]]) -> str:
    return ", ".join(f"{i.name}:{i.kind}{list(i.shape) if i.shape is not None else ''}"
                     for group in fields for i in group.values())
