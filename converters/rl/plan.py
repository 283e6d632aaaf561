"""`gato-tokenize rl`: episodes of Minari datasets, D4RL-style HDF5 files and episode tables -> rows.

Readers (converters/rl/sources) turn each format into flat named fields with T steps each; this
module decides how every field is tokenised (an `EpisodeSpec`, recorded in the manifest so rows
decode back), and makes the converter (converters/rl/converter.py), which filters episodes by
return and builds one row per episode with `tokenizer_kit.sequence.build_episode`. Observations
are mu-law companded; continuous actions are rescaled to [-1, 1] from their declared bounds where
there are any, and values still outside are counted (SPEC 2 clips them). Frame stacks become grey
frames (tokenizer_kit.frames).
Work units are contiguous episode ranges of one input, so workers share a dataset and the order
of rows is deterministic.
"""

from __future__ import annotations

import sys

import numpy as np

from tokenizer_kit.frames import detect as detect_stack
from tokenizer_kit.images import fitted_size
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.options import UsageError
from tokenizer_kit.sequence import KINDS, EpisodeSpec, FieldSpec
from tokenizer_kit.text import TextTokenizer

from ..base import SourceError
from .converter import RLConverter
from .options import IGNORE, RLOptions
from .sources import FieldInfo, Source, expand_inputs, open_source


def _usage(message: str):
    """Bad usage found once the inputs are open (an unknown --field name...): the convert command
    makes it argparse's one line and exit 2."""
    raise UsageError(message)


# --- the spec ----------------------------------------------------------------------------------

def build_spec(obs: dict[str, FieldInfo], act: dict[str, FieldInfo], kinds: dict[str, str],
               mu_law: dict[str, bool], image_fit: str = "resize", action_local_pos: bool = False,
               image_size: tuple[int, int] | None = None, field_loss: dict[str, bool] | None = None,
               action_bounds: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] | None = None,
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


def make_converter(opts: RLOptions, layout: VocabLayout | None = None,
                   tokenizer: TextTokenizer | None = None) -> RLConverter:
    """Open every input (cheap: metadata and flags only), agree on one EpisodeSpec, plan filters.
    The convert command passes the tokenizer and layout it loaded; else they come from `opts`."""
    if layout is None:
        tokenizer, layout = opts.tokenizer_and_layout()
    tok = tokenizer
    if not opts.inputs:
        _usage("rl: no INPUT given")
    kind = opts.source
    inputs = expand_inputs(list(opts.inputs), opts.split)
    external = opts.allow_hdf5_external_files
    sources, _ = _open_sources(inputs, kind, opts.on_error == "skip", external)
    obs, act = sources[0].fields()
    for other in sources[1:]:
        if other.fields() != (obs, act):
            raise SourceError(f"{other.path}: fields {_describe(other.fields())} differ from those of "
                              f"{sources[0].path}: {_describe((obs, act))}")
    kinds = dict(opts.field)
    mu_law = {}
    for name, value in opts.mu_law:
        if value.lower() not in ("on", "off"):
            _usage(f"--mu-law {name}={value}: expected on or off")
        mu_law[name] = value.lower() == "on"
    field_loss = {}
    for name, value in opts.field_loss:
        if value.lower() not in ("on", "off"):
            _usage(f"--field-loss {name}={value}: expected on or off")
        field_loss[name] = value.lower() == "on"
    bounds: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}
    for name, value in opts.action_bounds:
        low, _, high = value.partition(":")
        try:
            lo, hi = float(low), float(high)
        except ValueError:
            lo = hi = float("nan")
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            _usage(f"--action-bounds {name}={value}: expected LOW:HIGH, finite numbers with LOW < HIGH")
        bounds[name] = ((lo,), (hi,))
    _check_overrides({**obs, **act}, act, kinds, mu_law, field_loss, bounds)
    fit = opts.image_fit
    spec = build_spec(obs, act, kinds, mu_law, fit, opts.action_local_pos, opts.image_size,
                      field_loss, bounds, opts.repeated_text_loss)
    text = [f.name for f in spec.observations + spec.actions if f.kind == "text"]
    if text and tok is None:
        _usage(f"field {text[0]!r} is text: pass --text-tokenizer MODEL (or --field {text[0]}=ignore)")
    thresholds = {}
    floor, fraction = opts.min_return, opts.min_return_fraction
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
                       task=opts.task, min_return=thresholds, episodes_per_unit=opts.episodes_per_unit,
                       steps_per_unit=opts.steps_per_unit,
                       settings={"fields": kinds or None, "mu_law": mu_law or None, "image_fit": fit,
                                 "min_return_fraction": fraction},
                       frame_stack=opts.frame_stack, strict_ranges=opts.strict_ranges,
                       allow_hdf5_external=external, env_spec=recorded_env(opts, sources))
    conv._sources = {s.input: s for s in sources}
    for src in sources:
        if getattr(src, "last_episode_cut", False):
            print(f"gato-tokenize rl: warning: {src.path}: the last episode ({int(src.episode_lengths()[-1])} steps) "
                  f"has no terminal or timeout flag; taken whole, as a cut-off episode", file=sys.stderr)
    return conv


def recorded_env(opts: RLOptions, sources: list[Source]):
    """The environment to record in the manifest: --env-spec, else the inputs' own (a Minari
    dataset's env spec) when they all have the same one, else none (acting then makes --env as it is)."""
    if opts.env_spec is not None:
        return opts.env_spec
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
