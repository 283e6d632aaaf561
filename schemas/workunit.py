"""The work directory's contract: what a conversion plans (`ConversionPlan`) and what each finished
work unit leaves (`UnitMarker`), in `OUT/.work/` until the manifest is written.

Every unit is converted into its own shards, `shard-UUUUU-KKK.arrow` (schemas.shard.UNIT_SHARD_PATTERN), by
whichever process or machine converted it; its marker is written after its shards, so a marker
vouches for complete shards. The manifest is then merged from the markers in unit order. `WorkDir` is
the one place that reads what is done, for the writer (resume, finalize) and for `inspect` alike.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence

from tokenizer_kit.layout import MODALITY_NAMES

from .manifest import (FieldError, LongestUnit, ManifestError, ReturnStats, ShardInfo, SkippedRecord, Stats,
                       check_shard_list)
from .names import UnsafeNameError, check_sha256
from .split import shard_row_starts
from .storage import OutDir

WORK_DIR = ".work"
PLAN_NAME = f"{WORK_DIR}/plan.json"
WORK_FORMAT = 3  # of plan and markers; part of every unit id, so older work is never reused


def marker_name(index: int) -> str:
    return f"{WORK_DIR}/unit-{index:05d}.json"


class Unit(Protocol):
    """What the plan needs of a work unit (converters.base.WorkUnit, frozen: read-only here too)."""

    @property
    def key(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def start(self) -> int: ...
    @property
    def stop(self) -> int | None: ...


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def unit_id(fingerprint: str, unit: Unit) -> str:
    """Changes with the settings, the unit, and its file's size/mtime: stale work is never reused."""
    try:
        st = os.stat(unit.path)
        stamp = [st.st_size, st.st_mtime_ns]
    except (OSError, ValueError):
        stamp = None
    return _sha([fingerprint, unit.key, unit.path, unit.start, unit.stop, stamp])[:24]


@dataclass
class ConversionPlan:
    """What every process of one conversion agrees on; `finalize DIR` needs nothing else."""

    converter: str
    rl: bool
    fingerprint: str  # settings that change rows (converter options, layout, tokenizer, task)
    uids: list[str]  # one per work unit, in input order: changes with the unit's input file
    keys: list[str]
    layout: dict
    options: dict
    episode_spec: dict | None
    tokenizer_sha256: str | None
    shard_size: int
    on_error: str
    compression: str = "none"
    test_share: float = 0.0  # --test-share: records held out as the test split
    env_spec: dict | None = None  # the recorded environment (schemas.env_spec), for the manifest

    @classmethod
    def create(cls, converter: str, rl: bool, options: dict, units: Sequence[Unit], layout: dict,
               tokenizer_sha256: str | None, task: str | None, shard_size: int, on_error: str,
               compression: str, test_share: float = 0.0) -> "ConversionPlan":
        options = dict(options)
        episode_spec = options.pop("episode_spec", None)
        env_spec = options.pop("env_spec", None)
        fingerprint = _sha({"writer": WORK_FORMAT, "converter": converter, "options": options,
                            "episode_spec": episode_spec, "layout": layout, "tokenizer_sha256": tokenizer_sha256,
                            "task": task, "rl": rl, "shard_size": shard_size, "compression": compression,
                            **({"test_share": test_share} if test_share else {}),
                            **({"env_spec": env_spec} if env_spec else {})})
        return cls(converter, rl, fingerprint, [unit_id(fingerprint, u) for u in units], [u.key for u in units],
                   layout, options, episode_spec, tokenizer_sha256, shard_size, on_error, compression, test_share,
                   env_spec)

    def conversion_id(self) -> dict:
        """What the manifest records so that a re-run can tell its own finished directory."""
        return {"fingerprint": self.fingerprint, "units": len(self.uids),
                "units_sha256": hashlib.sha256(json.dumps(self.uids).encode()).hexdigest(),
                "shard_size": self.shard_size, "on_error": self.on_error, "compression": self.compression,
                **({"test_share": self.test_share} if self.test_share else {})}

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ConversionPlan":
        d = json.loads(text)
        if d.pop("format", WORK_FORMAT) != WORK_FORMAT:
            raise ValueError("written by another version of the writer")
        plan = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        plan.check()
        return plan

    def check(self) -> None:
        """A plan read back is data (ValueError when its shape is wrong): one distinct uid per unit
        key, text fields text, maps maps."""
        if not (isinstance(self.uids, list) and isinstance(self.keys, list) and len(self.uids) == len(self.keys)
                and all(isinstance(u, str) for u in self.uids) and len(set(self.uids)) == len(self.uids)
                and all(isinstance(k, str) for k in self.keys)):
            raise ValueError("uids and keys must be lists of text, one distinct uid per unit")
        if not (isinstance(self.converter, str) and isinstance(self.fingerprint, str) and isinstance(self.rl, bool)
                and isinstance(self.layout, dict) and isinstance(self.options, dict)
                and isinstance(self.episode_spec, (dict, type(None))) and isinstance(self.on_error, str)
                and isinstance(self.compression, str) and isinstance(self.shard_size, int)
                and (self.tokenizer_sha256 is None or isinstance(self.tokenizer_sha256, str))):
            raise ValueError("a field of the wrong type")
        if self.tokenizer_sha256 is not None:
            check_sha256(self.tokenizer_sha256, "plan: tokenizer_sha256")


@dataclass
class FieldErrorSum:
    max: float = 0.0
    sum: float = 0.0
    count: int = 0

    def add(self, other: "FieldErrorSum") -> None:
        self.max, self.sum, self.count = max(self.max, other.max), self.sum + other.sum, self.count + other.count


@dataclass
class ReturnSums:
    """Episode returns of a unit in a form units merge in (count, mean and M2 as in Chan et al.'s
    parallel variance: no sum of squares to overflow). min/max are None when count is 0."""

    count: int = 0
    min: float | None = None
    max: float | None = None
    mean: float = 0.0
    m2: float = 0.0

    def add(self, other: "ReturnSums") -> None:
        if not other.count:
            return
        if not self.count:
            self.count, self.min, self.max, self.mean, self.m2 = other.count, other.min, other.max, other.mean, other.m2
            return
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * (other.count / n)
        self.m2 += other.m2 + delta * delta * (self.count * other.count / n)
        assert other.min is not None and other.max is not None  # other.count > 0
        self.min = other.min if self.min is None else min(self.min, other.min)
        self.max = other.max if self.max is None else max(self.max, other.max)
        self.count = n

    def finite(self) -> bool:
        return math.isfinite(self.mean) and math.isfinite(self.m2)


def add_counts(into: dict[str, dict[str, int]], counts: dict[str, dict[str, int]]) -> None:
    """Sum grouped event counts (a converter's `Record.counts`) into `into`."""
    for group, by_name in counts.items():
        target = into.setdefault(group, {})
        for name, n in by_name.items():
            target[name] = target.get(name, 0) + int(n)


@dataclass
class UnitStats:
    rows: int = 0
    tokens: int = 0
    tokens_by_modality: list[int] = field(default_factory=list)  # indexed by modality code
    field_errors: dict[str, FieldErrorSum] = field(default_factory=dict)
    returns: ReturnSums = field(default_factory=ReturnSums)
    rows_per_task: dict[str, int] = field(default_factory=dict)
    filtered: int = 0  # left out on purpose by a converter option (e.g. RL --min-return)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # converters' events (Record.counts)
    longest: LongestUnit | None = None  # row: within the unit

    @classmethod
    def from_dict(cls, d: dict) -> "UnitStats":
        return cls(**{**d, "field_errors": {k: FieldErrorSum(**v) for k, v in d["field_errors"].items()},
                      "returns": ReturnSums(**d["returns"]),
                      "longest": LongestUnit(**d["longest"]) if d.get("longest") else None})


@dataclass
class UnitMarker:
    """A finished unit: its shards (complete, hashed) and what the manifest needs from it."""

    index: int
    key: str
    uid: str
    shards: list[ShardInfo]
    stats: UnitStats
    skipped: list[SkippedRecord] = field(default_factory=list)
    pid: int = 0
    host: str = ""
    format: int = WORK_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "UnitMarker":
        d = json.loads(text)
        if d.get("format") != WORK_FORMAT:
            raise ValueError("written by another version of the writer")
        return cls(**{**d, "shards": [ShardInfo(**s) for s in d["shards"]], "stats": UnitStats.from_dict(d["stats"]),
                      "skipped": [SkippedRecord(**s) for s in d["skipped"]]})


def merge_stats(markers: list[UnitMarker], rl: bool, modality_names: dict[int, str]) -> Stats:
    """The whole conversion's statistics, from its unit markers in unit order."""
    errors: dict[str, FieldErrorSum] = {}
    returns = ReturnSums()
    tasks: dict[str, int] = {}
    modality = [0] * len(modality_names)
    counts: dict[str, dict[str, int]] = {}
    longest: LongestUnit | None = None
    first_rows = shard_row_starts([m.stats.rows for m in markers])  # units' rows, numbered as their shards'
    for m, first in zip(markers, first_rows.tolist()):
        s = m.stats
        add_counts(counts, s.counts)
        if s.longest is not None and (longest is None or s.longest.tokens > longest.tokens):
            longest = LongestUnit(s.longest.tokens, first + s.longest.row, s.longest.source_id)
        modality = [a + b for a, b in zip(modality, s.tokens_by_modality, strict=True)]
        for name, e in s.field_errors.items():
            errors.setdefault(name, FieldErrorSum()).add(e)
        returns.add(s.returns)
        for t, c in s.rows_per_task.items():
            tasks[t] = tasks.get(t, 0) + c
    ret = None
    if rl:
        n = returns.count
        ret = ReturnStats(n, returns.min, returns.max, returns.mean if n else None,
                          math.sqrt(returns.m2 / n) if n else None)
    return Stats(
        rows=sum(m.stats.rows for m in markers), tokens=sum(m.stats.tokens for m in markers),
        tokens_by_modality={modality_names[i]: c for i, c in enumerate(modality)},
        field_errors={k: FieldError(v.max, v.sum / v.count if v.count else 0.0, v.count)
                      for k, v in sorted(errors.items())},
        rows_per_task=dict(sorted(tasks.items())), skipped=sum(len(m.skipped) for m in markers),
        filtered=sum(m.stats.filtered for m in markers), episode_return=ret,
        longest_unit=longest if longest is not None and longest.tokens else None,
    ).with_events({g: dict(sorted(v.items())) for g, v in sorted(counts.items())})


@dataclass
class Progress:
    units_total: int
    units_done: int
    shards: int
    rows: int


def marker_owns_its_shards(m: UnitMarker) -> bool:
    """A marker is data too (a tampered or foreign one must not list another unit's shard): its
    shards are named for its own unit (`shard-UUUUU-KKK.arrow`, UUUUU its index), listed once,
    with sha256s of the right shape and counts that are non-negative integers, and its statistics
    merge (rows counted once: the stats' rows are its shards' rows). Else the unit is not done."""
    prefix = f"shard-{m.index:05d}-"
    if not all(isinstance(s.name, str) and s.name.startswith(prefix) and s.name[len(prefix):-6].isdigit()
               and s.name.endswith(".arrow") for s in m.shards):
        return False
    try:
        check_shard_list(m.shards, "marker")
        merge_stats([m], True, MODALITY_NAMES).to_dict()  # its statistics have the shapes a merge needs
        if not (isinstance(m.stats.rows, int) and m.stats.rows == sum(s.rows for s in m.shards)):
            return False
    except (ManifestError, UnsafeNameError, TypeError, ValueError, KeyError, AttributeError, IndexError):
        return False
    return True


class WorkDir:
    """What OUT/.work/ says: the plan, and which units are done (a run may skip them)."""

    def __init__(self, out: OutDir):
        self.out = out

    def plan(self) -> ConversionPlan | None:
        text = self.out.read_text(PLAN_NAME)
        try:
            return ConversionPlan.from_json(text) if text else None
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def save_plan(self, plan: ConversionPlan) -> None:
        """Every partition writes the same plan; a different one (changed inputs or options) replaces it."""
        if self.plan() != plan:
            self.out.write_text(PLAN_NAME, plan.to_json())

    def done(self, plan: ConversionPlan, units: Sequence[int] | None = None) -> dict[int, UnitMarker]:
        """Finished units by index (of `units` only, None: all): a marker of this plan's unit (same
        uid) whose shards are all in OUT at the sizes it records. Anything else is converted again.
        A partition reads only its own units' markers."""
        listed = self.out.sizes(WORK_DIR)
        shards = self.out.sizes()
        names = {marker_name(i): i for i in (range(len(plan.uids)) if units is None else units)}
        done = {}
        for name, text in self.out.read_texts([n for n in names if n.rsplit("/", 1)[-1] in listed]).items():
            i = names[name]
            try:
                m = UnitMarker.from_json(text)
            except (ValueError, TypeError, KeyError, AttributeError):  # a marker of the wrong shape: not done
                continue
            if m.uid == plan.uids[i] and m.index == i and all(shards.get(s.name) == s.bytes for s in m.shards) \
                    and marker_owns_its_shards(m):
                done[i] = m
        return done

    def progress(self) -> Progress | None:
        """How far an unfinished conversion is (None: no plan, e.g. a finished directory)."""
        plan = self.plan()
        if plan is None:
            return None
        done = self.done(plan)
        return Progress(len(plan.uids), len(done), sum(len(m.shards) for m in done.values()),
                        sum(s.rows for m in done.values() for s in m.shards))
