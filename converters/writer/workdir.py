"""What OUT/.work/ says is done: the one place that decides which units a run may skip, for the
driver (resume, finalize) and for `inspect` alike."""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.workunit import PLAN_NAME, WORK_DIR, ConversionPlan, UnitMarker, marker_name

from .storage import OutDir

_TEMPORARY = re.compile(r"^\.(shard-(\d+)-\d+\.arrow|unit-(\d+)\.json|plan\.json|tokenizer\.model|manifest\.json)\.tmp\d+$")
_UNIT_SHARD = re.compile(r"^shard-(\d+)-\d+\.arrow$")


@dataclass
class Progress:
    units_total: int
    units_done: int
    shards: int
    rows: int


class WorkDir:
    def __init__(self, out: OutDir):
        self.out = out

    def plan(self) -> ConversionPlan | None:
        text = self.out.read_text(PLAN_NAME)
        try:
            return ConversionPlan.from_json(text) if text else None
        except (ValueError, TypeError, KeyError):
            return None

    def save_plan(self, plan: ConversionPlan) -> None:
        """Every partition writes the same plan; a different one (changed inputs or options) replaces it."""
        if self.plan() != plan:
            self.out.write_text(PLAN_NAME, plan.to_json())

    def done(self, plan: ConversionPlan) -> dict[int, UnitMarker]:
        """Finished units by index: a marker of this plan's unit (same uid) whose shards are all in
        OUT at the sizes it records. Anything else is converted again."""
        listed = self.out.sizes(WORK_DIR)
        shards = self.out.sizes()
        names = {marker_name(i): i for i in range(len(plan.uids))}
        texts = self.out.read_texts([n for n in names if n.rsplit("/", 1)[-1] in listed])
        done = {}
        for name, text in texts.items():
            i = names[name]
            try:
                m = UnitMarker.from_json(text)
            except (ValueError, TypeError, KeyError):
                continue
            if m.uid == plan.uids[i] and m.index == i and all(shards.get(s.name) == s.bytes for s in m.shards):
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

    def remove_temporaries(self, units: set[int] | None) -> None:
        """Temporary files that killed processes left, of these units (None: all), never another
        running partition's. (Uploads to an object store are whole: no temporary names there.)"""
        if not self.out.local:
            return
        def mine(name: str) -> bool:  # a unit's own, or (units None) any
            m = _TEMPORARY.match(name)
            return m is not None and (units is None or int(m.group(2) or m.group(3) or -1) in units)
        self.out.remove([n for n in self.out.sizes() if mine(n)]
                        + [f"{WORK_DIR}/{n}" for n in self.out.sizes(WORK_DIR) if mine(n)])

    def unlisted_shards(self, listed: set[str]) -> list[str]:
        """Unit shards in OUT that the manifest does not list (left by an earlier conversion)."""
        return [n for n in self.out.sizes() if _UNIT_SHARD.match(n) and n not in listed]

    def remove(self) -> None:
        """The work directory, once the manifest is written."""
        names = [f"{WORK_DIR}/{n}" for n in self.out.sizes(WORK_DIR)]
        self.out.remove(names)
        if self.out.local:
            import os
            try:
                os.rmdir(self.out.path(WORK_DIR))
            except OSError:
                pass
