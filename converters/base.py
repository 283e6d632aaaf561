"""What a converter is: a deterministic list of work units, each turned into records lazily.

The shard writer (converters/writer/) owns parallelism, resume, shard rolling, statistics and
`--on-error`; a converter only reads its source and builds rows with tokenizer_kit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

from tokenizer_kit.sequence import Row


class SourceError(ValueError):
    """A bad record: the message is one line naming file, record and field."""


@dataclass(frozen=True)
class WorkUnit:
    """A slice of the input that one worker converts on its own: a file, or a record range of one.

    `key` is stable across runs (it names the unit in resume markers and in the manifest).
    """

    key: str
    path: str
    start: int = 0
    stop: int | None = None


@dataclass
class Record:
    """One converted row with its scalars, a skipped one (row is None, reason set: bad input), or a
    filtered one (row is None, filtered: left out on purpose by an option such as --min-return;
    counted in the manifest's stats, not listed as skipped)."""

    source_id: str
    row: Row | None = None
    task: str = ""
    num_steps: int | None = None  # RL only
    episode_return: float | None = None  # RL only
    field_errors: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # name: (max, sum, count)
    skip_reason: str | None = None
    filtered: bool = False
    # events the manifest counts, by group and name: e.g. {"frame_stack_last": {"obs": 1}}; the groups the
    # manifest keeps as typed statistics are named in schemas.manifest (FRAME_STACK_EVENTS, ...)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # "test": a record the source itself holds out (a dataset's own test files); None: --test-share decides
    split: str | None = None


class Converter(Protocol):
    name: str  # "rl", "captions" or "text"
    rl: bool  # shards get num_steps and episode_return

    def work_units(self) -> Sequence[WorkUnit]: ...

    def convert_unit(self, unit: WorkUnit) -> Iterator[Record]:
        """Records of the unit in order; a bad record is yielded with skip_reason, never raised,
        except where the unit itself is unreadable (raise SourceError)."""
        ...

    def options(self) -> dict:
        """Options recorded in the manifest (what a reader needs to decode rows back)."""
        ...
