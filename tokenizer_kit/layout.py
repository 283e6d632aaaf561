"""The vocabulary layout: the one place that says which id means what.

Every other module asks a `VocabLayout` for offsets, sizes and constants, so that a shard written
under one layout can be recognised (and refused) by a model built for another.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields

PROFILES = ("gato", "disjoint")

# Modality codes stored per token in the `modality` column (SPEC section 7).
TEXT, IMAGE, DISCRETE, CONTINUOUS, SEPARATOR = 0, 1, 2, 3, 4
MODALITY_NAMES = {TEXT: "text", IMAGE: "image", DISCRETE: "discrete", CONTINUOUS: "continuous",
                  SEPARATOR: "separator"}
PATCH_SLOT = -1  # the token id that marks an image patch's slot
NO_POSITION = -1  # local_pos of tokens that have no local observation position
# The patch geometry is fixed: shards store every patch as PATCH_BYTES bytes and models embed
# patches of that size, so a layout's patch_size (kept in manifests) can only be PATCH_SIZE.
PATCH_SIZE = 16
PATCH_BYTES = PATCH_SIZE * PATCH_SIZE * 3


# Ids that follow from the constants; to_dict writes them so a manifest can be read by eye.
DERIVED = ("vocab_size", "separator_id", "continuous_offset", "discrete_offset")


class LayoutError(ValueError):
    """A layout that cannot exist, or two layouts that disagree."""


@dataclass(frozen=True)
class VocabLayout:
    """Id ranges of profile `gato` (discrete shares ids with text) or `disjoint`.

    gato:     text [0, T), discrete [0, 1024), continuous [C, C+1024), separator C+1024, C = max(T, 1024).
    disjoint: text [0, T), continuous [T, T+1024), discrete [T+1024, T+2048), separator T+2048.
    """

    text_vocab_size: int
    profile: str = "gato"
    num_bins: int = 1024
    num_discrete: int = 1024
    mu: float = 100.0
    m: float = 256.0
    patch_size: int = PATCH_SIZE
    position_bins: int = 128
    local_positions: int = 512
    eos_id: int = -1  # end-of-text id of the SentencePiece model (-1: none known)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise LayoutError(f"unknown layout profile {self.profile!r}; expected one of {', '.join(PROFILES)}")
        ints = ("text_vocab_size", "num_bins", "num_discrete", "patch_size", "position_bins", "local_positions",
                "eos_id")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise LayoutError(f"layout constant {name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy ints would not survive JSON
        for name in ints[:-1]:
            if getattr(self, name) <= 0:
                raise LayoutError(f"layout constant {name} must be positive, got {getattr(self, name)}")
        for name in ("mu", "m"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < math.inf:
                raise LayoutError(f"layout constant {name} must be a positive number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.patch_size != PATCH_SIZE:
            raise LayoutError(f"patch_size {self.patch_size} is not supported: shards store "
                              f"{PATCH_SIZE}x{PATCH_SIZE} patches")
        if self.position_bins > 255:  # shards store position bounds (0..position_bins) as uint8
            raise LayoutError(f"position_bins {self.position_bins} does not fit the uint8 patch_pos column")
        if not -1 <= self.eos_id < self.text_vocab_size:
            raise LayoutError(f"eos id {self.eos_id} is outside the text range [0, {self.text_vocab_size})")

    # --- offsets -------------------------------------------------------------------------------
    @property
    def continuous_offset(self) -> int:
        """T, except that profile gato never lets continuous ids overlap discrete ones: with a text
        vocab smaller than 1024 (small demo models) SPEC's [T, T+1024) would collide with the
        discrete range [0, 1024), so continuous values start at max(T, 1024)."""
        if self.profile == "gato":
            return max(self.text_vocab_size, self.num_discrete)
        return self.text_vocab_size

    @property
    def discrete_offset(self) -> int:
        return 0 if self.profile == "gato" else self.text_vocab_size + self.num_bins

    @property
    def separator_id(self) -> int:
        return self.continuous_offset + self.num_bins + (self.num_discrete if self.profile == "disjoint" else 0)

    @property
    def vocab_size(self) -> int:
        """Size of the shared embedding table: every id is in [0, vocab_size)."""
        return self.separator_id + 1

    @property
    def patch_values(self) -> int:
        return self.patch_size * self.patch_size * 3

    def id_range(self, modality: int) -> tuple[int, int]:
        """Half-open range [lo, hi) of legal ids for a token of `modality` (image: the patch slot)."""
        if modality == TEXT:
            return 0, self.text_vocab_size
        if modality == DISCRETE:
            return self.discrete_offset, self.discrete_offset + self.num_discrete
        if modality == CONTINUOUS:
            return self.continuous_offset, self.continuous_offset + self.num_bins
        if modality == SEPARATOR:
            return self.separator_id, self.separator_id + 1
        if modality == IMAGE:
            return PATCH_SLOT, PATCH_SLOT + 1
        raise LayoutError(f"unknown modality code {modality}")

    # --- serialisation and comparison ------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d.update({key: getattr(self, key) for key in DERIVED})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VocabLayout":
        """Inverse of `to_dict`; the derived ids it carries must agree with the constants."""
        if not isinstance(d, dict):
            raise LayoutError(f"a layout must be a dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        try:
            layout = cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as e:
            raise LayoutError(f"malformed layout ({e})") from None
        for key in DERIVED:
            if key in d and getattr(layout, key) != d[key]:
                raise LayoutError(f"layout field {key}={d[key]!r} disagrees with its constants "
                                  f"({getattr(layout, key)})")
        return layout

    def name(self) -> str:
        """Short human name, e.g. `gato T=32000`, for messages."""
        return f"{self.profile} T={self.text_vocab_size}"

    def check_same(self, other: "VocabLayout", what: str = "shards", against: str = "model") -> None:
        """Raise a one-line LayoutError naming both layouts and every constant where they differ."""
        a, b = self.to_dict(), other.to_dict()
        diffs = [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if diffs:
            text = {"text_vocab_size", "eos_id"} & {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
            fix = ""
            if text:  # the text tokenizer decides these: the usual cause of a mismatch
                fix = ("; convert every directory with the same --text-tokenizer (re-convert the odd one out)"
                       if against != "model" and against != "checkpoint" else
                       "; re-convert the data with the --text-tokenizer the model was trained with")
            elif "profile" in {k for k in a if a.get(k) != b.get(k)}:
                fix = "; convert every directory with the same --layout-profile"
            raise LayoutError(f"layout of {what} ({self.name()}) differs from the {against}'s ({other.name()}): "
                              + "; ".join(diffs) + fix)
