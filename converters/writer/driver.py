"""The conversion driver: list the work units, skip the finished ones, run the rest on an engine,
and write the manifest last (the only step that needs every unit, and a cheap one).

Each unit becomes its own shards (`shard-UUUUU-KKK.arrow`) and marker (`.work/unit-UUUUU.json`),
written by whichever process converted it, so output is byte-identical for any --workers, engine
or partitioning; a re-run (after a crash, kill -9, or on another machine) converts only the units
without a complete marker; nothing is copied after conversion.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, replace

from schemas.manifest import (MANIFEST_NAME, TOKENIZER_NAME, Manifest, ManifestError, ShardInfo, SkippedRecord,
                              check_shard_list)
from schemas.names import UnsafeNameError
from schemas.shard_table import SHARD_TABLE_NAME
from schemas.storage import OutDir
from schemas.workunit import PLAN_NAME, WORK_DIR, ConversionPlan, UnitMarker, WorkDir, merge_stats
from tokenizer_kit.files import file_sha256
from tokenizer_kit.layout import MODALITY_NAMES, VocabLayout
from tokenizer_kit.options import UsageError  # bad usage found here (an OUT of another conversion): exit 2

from ..base import Converter, SourceError
from ..progress import Progress
from .engines import run_local, run_ray
from .lock import OutLock
from .unit import UnitJob, UnitSettings
from .leftovers import remove_temporaries, remove_unlisted_shards, remove_work_dir


@dataclass
class ConvertResult:
    """What a run did (the command prints it as one line)."""

    out: str
    complete: bool  # manifest written (False after a partition run)
    units_total: int
    units_converted: int  # converted by this run (the rest were already complete)
    manifest: Manifest | None = None
    seconds: float = 0.0
    up_to_date: bool = False  # the directory already held this exact conversion


def _read_manifest(out: OutDir) -> tuple[bool, Manifest | None]:
    """(whether OUT has a manifest, the manifest if it is readable)."""
    text = out.read_text(MANIFEST_NAME)
    try:
        return text is not None, Manifest.parse(text, MANIFEST_NAME, out.read_bytes) if text else None
    except ManifestError:
        return True, None


def convert(converter: Converter, out: str | os.PathLike, *, layout: VocabLayout,
            tokenizer_path: str | os.PathLike | None = None, workers: int = 1, on_error: str = "fail",
            shard_size: int = 256 * 10**6, num_partitions: int = 1, partition: int | None = None,
            task: str | None = None, progress: bool = True, engine: str = "local", ray_address: str | None = None,
            compression: str = "none", test_share: float = 0.0) -> ConvertResult:
    """Convert the work units of `converter` into the shard directory `out` (a path or fsspec URL)."""
    t0 = time.perf_counter()
    store = OutDir(out)
    if store.local and os.path.exists(store.root) and not os.path.isdir(store.root):
        raise UsageError(f"--out {out} exists and is not a directory")

    units = list(converter.work_units())
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        raise SourceError(f"two inputs give the same work unit {next(k for k in keys if keys.count(k) > 1)!r}")
    plan = ConversionPlan.create(converter.name, converter.rl, converter.options(), units, layout.to_dict(),
                                 file_sha256(tokenizer_path) if tokenizer_path else None, task, shard_size, on_error,
                                 compression, test_share)
    finished, old = _read_manifest(store)
    if finished:
        if old is not None and old.typed_stats.conversion == plan.conversion_id():
            return ConvertResult(store.url, True, len(units), 0, old, time.perf_counter() - t0, up_to_date=True)
        raise UsageError(f"{out} already holds a finished conversion of other inputs or options; "
                         f"choose another --out or delete it")

    store.makedirs(WORK_DIR)
    lock = ".lock" if partition is None else f".lock.partition-{partition}"
    with OutLock(store, lock):
        work = WorkDir(store)
        work.save_plan(plan)
        if tokenizer_path:
            _copy_tokenizer(store, tokenizer_path)
        mine = range(len(units)) if partition is None else range(partition, len(units), num_partitions)
        remove_temporaries(store, set(mine))
        done = work.done(plan, None if partition is None else mine)
        if partition is None and on_error == "fail":
            for m in done.values():  # a unit finished earlier under --on-error skip
                if m.skipped:
                    raise SourceError(m.skipped[0].reason)
        jobs = [UnitJob(i, units[i], plan.uids[i]) for i in mine if i not in done]
        settings = UnitSettings(store, layout, converter.rl, on_error, task, shard_size, compression, test_share,
                                text=converter.name == "text", caption=converter.name == "captions")
        bar = Progress(converter.name + (f" [{partition}/{num_partitions}]" if partition is not None else ""),
                       len(jobs), enabled=progress)

        def on_done(m: UnitMarker) -> None:
            done[m.index] = m  # what finalize needs: every marker is read (or made) once per run
            bar.update(m.stats.rows + len(m.skipped), m.stats.tokens)
            bar.unit_done()

        try:
            if engine == "ray":
                run_ray(converter, settings, jobs, ray_address, workers if workers > 1 else None, on_done)
            else:
                run_local(converter, settings, jobs, workers, on_done)
        finally:
            bar.close()
        if partition is not None:
            return ConvertResult(store.url, False, len(units), len(jobs), None, time.perf_counter() - t0)
        manifest = _finalize(store, work, plan, done)
    return ConvertResult(store.url, True, len(units), len(jobs), manifest, time.perf_counter() - t0)


_STAGED_TOKENIZER = f"{WORK_DIR}/{TOKENIZER_NAME}"


def _copy_tokenizer(store: OutDir, tokenizer_path) -> None:
    """Into the work directory: OUT holds nothing but resume state until its manifest is written."""
    with store.staged(_STAGED_TOKENIZER) as tmp:
        shutil.copyfile(tokenizer_path, tmp)


def finalize(out: str | os.PathLike) -> Manifest:
    """Write the manifest of a directory whose units were all converted (by partitions, anywhere)."""
    store = OutDir(out)
    if (m := _read_manifest(store)[1]) is not None:
        return m
    with OutLock(store):
        work = WorkDir(store)
        plan = work.plan()
        if plan is None:
            raise SourceError(f"{out}: no conversion to finish here (no {PLAN_NAME})")
        return _finalize(store, work, plan)


def _finalize(store: OutDir, work: WorkDir, plan: ConversionPlan,
              done: dict[int, UnitMarker] | None = None) -> Manifest:
    """The manifest from the markers (`done`: those this run already holds; else read, once)."""
    done = work.done(plan) if done is None else done
    if len(done) < len(plan.uids):
        first = next(i for i in range(len(plan.uids)) if i not in done)
        raise SourceError(f"{store.url}: {len(plan.uids) - len(done)} of {len(plan.uids)} work units are not "
                          f"converted yet (first: unit {first}, {plan.keys[first]}); run the partitions that hold them")
    markers = [done[i] for i in range(len(plan.uids))]
    stats = merge_stats(markers, plan.rl, MODALITY_NAMES)
    stats = replace(stats, conversion=plan.conversion_id())
    shards: list[ShardInfo] = [s for m in markers for s in m.shards]
    skipped: list[SkippedRecord] = [s for m in markers for s in m.skipped]
    if stats.rows == 0:  # kept no record: say why and write no manifest (the work directory stays)
        why = (f"all {len(skipped)} records were skipped (the first: {skipped[0].source}: {skipped[0].reason})"
               if skipped else f"all {stats.filtered} records were filtered out by the options" if stats.filtered
               else "the inputs hold no records")
        raise SourceError(f"{store.url}: the conversion kept no record: {why}")
    manifest = Manifest(layout=plan.layout, converter=plan.converter, options=plan.options, shards=shards,
                        stats=stats.to_dict(), skipped=[{"source": s.source, "reason": s.reason} for s in skipped],
                        tokenizer_sha256=plan.tokenizer_sha256, episode_spec=plan.episode_spec,
                        env_spec=plan.env_spec, tasks=sorted(stats.rows_per_task), compression=plan.compression)
    try:
        text, table = manifest.encode()
    except ValueError as e:  # a statistic JSON cannot hold: refused at conversion, so a bug if it gets here
        raise SourceError(f"{store.url}: statistics that are not finite numbers ({e})") from None
    try:  # every unit's shards are its own (WorkDir.done); the manifest is one a reader accepts
        check_shard_list(shards, f"{store.url}: the units' markers")
        Manifest.parse(text, f"{store.url}/{MANIFEST_NAME}", lambda name: table)  # (its shard table, if any)
    except (ManifestError, UnsafeNameError) as e:
        raise SourceError(str(e)) from None
    remove_unlisted_shards(store, {s.name for s in shards})
    remove_temporaries(store, None)
    if plan.tokenizer_sha256 and TOKENIZER_NAME in store.sizes(WORK_DIR):  # else moved by an interrupted finalize
        store.move(_STAGED_TOKENIZER, TOKENIZER_NAME)
    if table is not None:  # many shards: their records in shards.arrow, written before the manifest
        with store.staged(SHARD_TABLE_NAME) as tmp:
            tmp.write_bytes(table)
    store.write_text(MANIFEST_NAME, text)
    remove_work_dir(store)
    return manifest
