"""`gato-tokenize rl` options, defined once: each field's default, range or choices and help; the
command line is built from them and `make_converter` (plan.py) reads the typed instance."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from schemas.env_spec import EnvSpec, EnvSpecError
from tokenizer_kit.argtypes import image_size_or_native
from tokenizer_kit.frames import MODES as FRAME_MODES
from tokenizer_kit.images import FIT_POLICIES
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.options import opt
from tokenizer_kit.sequence import KINDS

from ..options import ConvertOptions, text_tokenizer_opt
from .converter import STEPS_PER_UNIT
from .sources import SOURCE_KINDS

if TYPE_CHECKING:
    from tokenizer_kit.text import TextTokenizer

IGNORE = "ignore"
INPUTS_HELP = ("INPUT: a Minari dataset directory or local dataset id, a LeRobot or RLDS folder, a D4RL-style .hdf5 "
          "file, a .parquet file, a folder of either, or a HF datasets directory")


def pair(text: str) -> tuple[str, str]:
    """NAME=VALUE (the name may hold '=': the last one splits)."""
    name, sep, value = text.rpartition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def env_spec(text: str) -> "EnvSpec":
    """--env-spec as a checked schemas.env_spec.EnvSpec: bad usage before anything is read."""
    try:
        return EnvSpec.parse(text)
    except EnvSpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


@dataclass
class RLOptions(ConvertOptions):
    """Every option of `gato-tokenize rl` (the common ones are ConvertOptions')."""

    kind: ClassVar[str] = "rl"
    inputs_help: ClassVar[str | None] = INPUTS_HELP

    text_tokenizer: str | None = text_tokenizer_opt(when="needed when episodes have text fields")
    text_vocab_size: int = opt(32000, "text vocab size of the layout when no --text-tokenizer is given "
                                      "(default 32000)", lo=1, metavar="T")
    source: str = opt("auto", "reader to use (default: guessed from each input)", choices=SOURCE_KINDS)
    field: list[tuple[str, str]] = opt([], f"tokenise field NAME as KIND ({', '.join(KINDS)}, or {IGNORE} to "
                                           "leave it out); repeatable. Names: obs, obs/KEY, action, action/KEY, or a "
                                           "table's column", cli="append", parse=pair, metavar="NAME=KIND")
    mu_law: list[tuple[str, str]] = opt([], "mu-law companding of a continuous observation field (default on; "
                                            "actions never)", cli="append", parse=pair, metavar="NAME=on|off")
    min_return: float | None = opt(None, "keep only episodes whose return (sum of rewards) is >= X", metavar="X")
    min_return_fraction: float | None = opt(None, "keep only episodes with return >= F * the best episode return of "
                                                  "their input (Gato kept >= 0.8 of the expert's); needs a positive "
                                                  "best return", metavar="F")
    steps_per_unit: int = opt(STEPS_PER_UNIT, f"a work unit is a run of whole episodes with about N steps (default "
                                              f"{STEPS_PER_UNIT})", lo=1, metavar="N")
    episodes_per_unit: int | None = opt(None, "exactly N episodes per work unit instead", lo=1, metavar="N")
    image_fit: str = opt("resize", "image sides that are not multiples of 16: resize (default) or pad",
                         choices=FIT_POLICIES)
    image_size: tuple[int, int] | None = opt(None, "fit every image observation to N x N or H x W pixels (multiples "
                                                   "of 16; default native: the nearest multiples of 16 of the "
                                                   "dataset's frames)", parse=image_size_or_native,
                                             metavar="N|HxW|native")
    action_local_pos: bool = opt(False, "give action tokens one shared local position (default: none, as in the "
                                        "paper)", cli="flag")
    frame_stack: str = opt("auto", "image observations that stack grey frames ((C,H,W), or (H,W,C) with C not 1 or "
                                   "3): last keeps each step's newest frame, split keeps every frame as its own image "
                                   "(oldest first), auto (default) takes last for episodes where it loses nothing, "
                                   "else split", choices=FRAME_MODES)
    action_bounds: list[tuple[str, str]] = opt([], "declared range of continuous action NAME: rescaled from it to "
                                                   "[-1, 1] (default: the bounds the source declares, e.g. a Minari "
                                                   "Box; none: values are taken as they are)", cli="append",
                                               parse=pair, metavar="NAME=LOW:HIGH")
    strict_ranges: bool = opt(False, "an episode with continuous actions outside [-1, 1] (after rescaling) is a bad "
                                     "record (skipped, or an error with --on-error fail) instead of a warning",
                              cli="flag")
    allow_hdf5_external_files: bool = opt(False, "let HDF5 external storage, external links and virtual datasets "
                                                 "read other files on this machine (refused by default: a hostile "
                                                 "file can pull any local file into the shards)", cli="flag")
    split: str = opt("train", "a folder of HF hub table shards (the jat-dataset's "
                              "<task>/<split>-00000-of-00004.parquet) is read as its NAME split (default train); its "
                              "task is the folder's name", metavar="NAME")
    env_spec: EnvSpec | None = opt(None, "the environment the episodes were recorded in, recorded in the manifest "
                                         "for acting: an id, or {\"id\": ..., \"kwargs\": {...}, \"wrappers\": "
                                         "[{\"entry_point\": \"gymnasium.wrappers:AtariPreprocessing\", \"kwargs\": "
                                         "{...}}, ...]} inline or in a file (default: a Minari dataset's own env "
                                         "spec)", parse=env_spec, metavar="JSON|FILE.json|ID")
    repeated_text_loss: bool = opt(False, "keep a text observation that repeats the previous step's text (a mission "
                                          "given every step) a training target; default: only its first occurrence "
                                          "in an episode is", cli="flag")
    field_loss: list[tuple[str, str]] = opt([], "off: a text observation NAME stays in the context but is no training "
                                                "target (e.g. a mission repeated at every step)", cli="append",
                                            parse=pair, metavar="NAME=on|off")

    def vocab_layout(self, tokenizer: "TextTokenizer | None") -> "VocabLayout":
        """The tokenizer's layout, else one of --text-vocab-size text ids (episodes without text)."""
        if tokenizer is not None:
            return tokenizer.layout(self.layout_profile)
        return VocabLayout(text_vocab_size=self.text_vocab_size, profile=self.layout_profile)
