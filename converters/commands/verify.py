"""`gato-tokenize verify DIR`: prove a shard directory holds to docs/SPEC.md section 7 before training.

Each shard is memory-mapped once: a thread hashes the mapped bytes (hashlib releases the GIL) while
the main thread validates the same pages batch by batch with schemas.validate, so verifying costs
about one read of the data. `--simulate-ranks` shows how the trainer's loader splits the rows
between ranks and workers and proves every row is read exactly once per epoch.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from schemas.arrow_numpy import list_offsets, to_numpy
from schemas.manifest import MANIFEST_NAME, TOKENIZER_NAME, Manifest, ManifestError
from schemas.reader import ShardDir
from schemas.split import directory_seed, locate_rows, reader_index, split_rows
from schemas.storage import is_remote, join
from schemas.validate import Problem, validate_and_count
from tokenizer_kit.errors import first_line
from tokenizer_kit.files import file_sha256
from tokenizer_kit.layout import MODALITY_NAMES, VocabLayout
from tokenizer_kit.options import add_command, opt

from .listing import head_and_tail, human_bytes

GROUP_BYTES = 32 << 20  # record batches are validated in groups of about this many token bytes (fewer
# per-group costs; the fast path copies nothing, the general path about this much)


@dataclass
class ShardReport:
    """What one shard holds, measured from its bytes, and what is wrong with it."""

    name: str
    bytes: int = 0
    sha256: str = ""
    rows: int = 0
    tokens: int = 0
    modality_tokens: np.ndarray = field(default_factory=lambda: np.zeros(len(MODALITY_NAMES), np.int64))
    returns: list[np.ndarray] = field(default_factory=list)
    lengths: list[np.ndarray] = field(default_factory=list)  # tokens of each row
    tasks: dict[str, int] = field(default_factory=dict)  # rows per task
    rl: bool | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def row_tokens(self) -> np.ndarray:
        return np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)

    def add(self, problem: Problem | str, row_offset: int = 0) -> None:
        if isinstance(problem, Problem) and problem.row is not None:
            problem = Problem(problem.row + row_offset, problem.column, problem.reason, problem.source_id)
        self.problems.append(f"{self.name}: {problem}")


def _hash(buf: pa.Buffer, out: list) -> None:
    out.append(hashlib.sha256(memoryview(buf)).hexdigest())


def check_shard(path: Path, layout: VocabLayout, hash_bytes: bool = True) -> ShardReport:
    """Hash, parse and validate one shard from a single memory map (hash_bytes=False: no sha256)."""
    rep = ShardReport(path.name)
    with pa.memory_map(str(path), "r") as source:
        buf = source.read_buffer()  # zero-copy view of the whole mapped file
    rep.bytes = buf.size
    digest: list[str] = []
    hasher = threading.Thread(target=_hash, args=(buf, digest)) if hash_bytes else None
    if hasher is not None:
        hasher.start()
    try:
        reader = pa.ipc.open_stream(buf)
        rep.rl = "episode_return" in reader.schema.names
        group: list[pa.RecordBatch] = []  # validated together: fewer, larger numpy passes
        group_start = group_bytes = 0
        for batch in reader:
            try:
                batch.validate(full=True)  # offsets in bounds, UTF-8 strings: before any array is indexed
            except pa.ArrowInvalid as e:
                rep.add(f"rows {rep.rows}..{rep.rows + batch.num_rows - 1}: invalid Arrow data "
                        f"({first_line(e)})")
                rep.rows += batch.num_rows
                continue
            if not group:
                group_start, group_bytes = rep.rows, 0
            group.append(batch)
            group_bytes += _count(rep, batch)
            rep.rows += batch.num_rows
            if group_bytes >= GROUP_BYTES:
                _validate(rep, group, group_start, layout)
                group = []
        if group:
            _validate(rep, group, group_start, layout)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:  # e.g. a damaged schema
        rep.add(f"unreadable Arrow stream after {rep.rows} rows ({first_line(e)})")
    finally:
        if hasher is not None:
            hasher.join()
    rep.sha256 = digest[0] if digest else ""
    return rep


def _validate(rep: ShardReport, group: list[pa.RecordBatch], first_row: int, layout: VocabLayout) -> None:
    """Check a group of batches; its tokens per modality come from the same pass (for uniform steps
    or plain text, from the step pattern the fast path proved, without counting token by token)."""
    table = pa.Table.from_batches(group)
    problems, counts = validate_and_count(table, layout)
    rep.modality_tokens += counts
    if "task" in table.schema.names:  # once a group: a value count costs the same for 1 row or 1000
        for vc in table.column("task").value_counts().to_pylist():
            rep.tasks[vc["values"]] = rep.tasks.get(vc["values"], 0) + vc["counts"]
    for p in problems:
        rep.add(p, first_row)


def _count(rep: ShardReport, batch: pa.RecordBatch) -> int:
    """Add the batch's rows, tokens and returns (modality and task counts: _validate); return its token bytes."""
    names = batch.schema.names
    size = 0
    if "tokens" in names:
        lengths = np.diff(list_offsets(batch.column("tokens")))
        rep.lengths.append(lengths)
        rep.tokens += int(lengths.sum())
        size = int(lengths.sum()) * 8  # ids, mask, position, modality: what validation reads
    if "episode_return" in names:
        rep.returns.append(to_numpy(batch.column("episode_return")))
    return size


# --- the directory ---------------------------------------------------------------------------------

@dataclass
class VerifyResult:
    shards: list[ShardReport]
    problems: list[str]
    seconds: float

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)


def verify_dir(path: str | Path) -> VerifyResult:
    """Every check of SPEC 7 over a finished shard directory; the problems found, one line each."""
    t0 = time.perf_counter()
    sd = ShardDir.open(path, listing=True)
    if sd.manifest is None:
        raise ManifestError(f"{join(sd.path, MANIFEST_NAME)}: no manifest (conversion not finished?); "
                            f"{len(sd.shards)} complete shards on disk")
    m = sd.manifest
    layout = sd.layout
    problems = [f"{n}: listed in the manifest but missing" for n in sd.missing]
    problems += [f"{n}: complete shard on disk but not listed in the manifest" for n in sd.unlisted]
    problems += _check_tokenizer(sd, layout)
    if not m.shards or m.total_rows == 0:  # a conversion that kept nothing is not a usable directory
        skipped = m.skipped[0]["reason"] if m.skipped and isinstance(m.skipped[0], dict) else None
        problems.append(f"empty: the manifest lists {len(m.shards)} shards and 0 rows"
                        + (f" ({len(m.skipped)} records skipped, the first: {skipped})" if skipped else ""))
    reports = []
    for i, s in enumerate(sd.shards):
        local = sd.file(i, checked=False)  # verify reports a wrong hash itself, as a problem
        rep = check_shard(local, layout)
        if sd.remote:
            local.unlink(missing_ok=True)  # one shard's copy on disk at a time
        for what in ("sha256", "bytes", "rows", "tokens"):
            want, got = getattr(s.info, what), getattr(rep, what)
            if want != got:
                rep.add(f"manifest says {what} {want}, the shard has {got}")
        if m.tasks and not set(rep.tasks) <= set(m.tasks):
            rep.add(f"column task: {sorted(set(rep.tasks) - set(m.tasks))} not among the manifest's tasks {m.tasks}")
        if m.episode_spec is not None and rep.rl is False:
            rep.add("the manifest has an episode spec but the shard has no RL columns")
        problems += rep.problems
        reports.append(rep)
    problems += _check_stats(m, reports)
    return VerifyResult(reports, problems, time.perf_counter() - t0)


def _check_tokenizer(sd: ShardDir, layout: VocabLayout) -> list[str]:
    m = sd.manifest
    if m is None or m.tokenizer_sha256 is None:
        return []
    p = sd.tokenizer_path
    if p is None:
        return [f"{TOKENIZER_NAME}: missing, the manifest records sha256 {m.tokenizer_sha256[:12]}..."]
    if file_sha256(p) != m.tokenizer_sha256:
        return [f"{TOKENIZER_NAME}: sha256 differs from the manifest's"]
    tok = sd.text_tokenizer()
    if tok.vocab_size != layout.text_vocab_size or tok.eos_id != layout.eos_id:
        return [f"{TOKENIZER_NAME}: vocab size {tok.vocab_size} / eos {tok.eos_id} differ from the layout's "
                f"{layout.text_vocab_size} / {layout.eos_id}"]
    return []


def _check_stats(m: Manifest, reports: list[ShardReport]) -> list[str]:
    """Manifest totals against what the shards hold (a manifest without statistics is not checked)."""
    if not m.stats:
        return []
    st, out = m.typed_stats, []
    rows, tokens = sum(r.rows for r in reports), sum(r.tokens for r in reports)
    for key, want, got in (("rows", st.rows, rows), ("tokens", st.tokens, tokens)):
        if want != got:
            out.append(f"{MANIFEST_NAME}: stats {key} {want}, the shards hold {got}")
    if st.tokens_by_modality:
        counts = sum((r.modality_tokens for r in reports), np.zeros(len(MODALITY_NAMES), np.int64))
        for code, name in MODALITY_NAMES.items():
            want = st.tokens_by_modality.get(name, 0)
            if want != counts[code]:
                out.append(f"{MANIFEST_NAME}: stats {name} tokens {want}, the shards hold {int(counts[code])}")
    if st.rows_per_task:
        got_tasks: dict[str, int] = {}
        for r in reports:
            for t, c in r.tasks.items():
                got_tasks[t] = got_tasks.get(t, 0) + c
        if {k: v for k, v in st.rows_per_task.items() if v} != got_tasks:
            out.append(f"{MANIFEST_NAME}: stats rows_per_task {st.rows_per_task}, the shards hold {got_tasks}")
    ret = st.episode_return
    if ret is not None and any(r.returns for r in reports):
        values = np.concatenate([x for r in reports for x in r.returns])
        seen = {"count": len(values), "min": values.min() if len(values) else None,
               "max": values.max() if len(values) else None,
               "mean": values.mean() if len(values) else None}
        for k, v in seen.items():
            want = getattr(ret, k)
            if want is not None and v is not None and not np.isclose(want, v, rtol=1e-6, atol=1e-9):
                out.append(f"{MANIFEST_NAME}: stats episode_return {k} {want}, the shards hold {v}")
    return out


# --- the loader's split ------------------------------------------------------------------------------

def loader_seed(seed: int, data_index: int = 0) -> int:
    """The seed gato-train's loader gives the row split of its `data_index`-th --data directory."""
    return directory_seed(seed, data_index)


def simulate_ranks(rows_per_shard: list[int], row_tokens: np.ndarray, world: int, workers: int, epoch: int = 0,
                   seed: int = 0, data_index: int = 0, split: str = "rows") -> dict:
    """Replay the loader's row split (schemas.split: "rows" for a local directory, "shards" for
    one streamed from a URL) for every (rank, worker) and count how often each row is read."""
    total = int(sum(rows_per_shard))
    s = loader_seed(seed, data_index)
    reads = np.zeros(total, np.int64)
    readers = []
    for rank in range(world):
        for worker in range(max(1, workers)):
            rows = split_rows(split, rows_per_shard, rank, world, worker, workers, epoch, s)
            np.add.at(reads, rows, 1)
            shards = np.unique(locate_rows(rows_per_shard, rows)[0])
            readers.append({"rank": rank, "worker": worker, "reader": reader_index(rank, world, worker, workers),
                            "rows": int(len(rows)), "tokens": int(row_tokens[rows].sum()) if len(row_tokens) else 0,
                            "shards": int(len(shards)), "first_rows": rows[:4].tolist()})
    twice, missed = np.flatnonzero(reads > 1), np.flatnonzero(reads == 0)
    return {"split": split, "world": world, "workers": workers, "epoch": epoch, "seed": seed, "loader_seed": s,
            "rows": total,
            "readers": readers, "read_twice": twice.tolist()[:10], "num_read_twice": int(len(twice)),
            "skipped": missed.tolist()[:10], "num_skipped": int(len(missed)),
            "exactly_once": bool(len(twice) == 0 and len(missed) == 0)}


def format_simulation(sim: dict) -> str:
    rd = sim["readers"]
    rule = "assign_rows" if sim.get("split", "rows") == "rows" else "assign_rows_by_shard"
    out = [f"loader split (schemas.split.{rule}) of {sim['rows']:,} rows, epoch {sim['epoch']}, seed "
           f"{sim['seed']}: {sim['world']} ranks x {max(1, sim['workers'])} workers = {len(rd)} readers"]
    for r in head_and_tail(rd, 8):
        if r is None:
            out.append(f"  ... {len(rd) - 16} more readers")
            continue
        out.append(f"  rank {r['rank']:>3} worker {r['worker']:>2}: {r['rows']:>8,} rows {r['tokens']:>12,} tokens "
                   f"from {r['shards']} shards, first rows {r['first_rows']}")
    rows = [r["rows"] for r in rd]
    toks = [r["tokens"] for r in rd]
    out.append(f"  rows per reader {min(rows):,}..{max(rows):,}, tokens per reader {min(toks):,}..{max(toks):,}")
    if sim["exactly_once"]:
        out.append(f"every row is read exactly once per epoch: {sim['rows']:,} rows, none twice, none skipped")
    else:
        out.append(f"SPLIT IS WRONG: {sim['num_read_twice']} rows read more than once (first {sim['read_twice']}), "
                   f"{sim['num_skipped']} rows skipped (first {sim['skipped']})")
    idle = sum(1 for r in rows if r == 0)
    if idle:
        out.append(f"note: {idle} readers get no row of their own (fewer rows than readers); in training "
                   "they re-read other readers' rows")
    return "\n".join(out)


# --- command line ------------------------------------------------------------------------------------

@dataclass
class VerifyOptions:
    """The options of `gato-tokenize verify`."""

    dir: str = opt("", "shard directory (manifest.json + shard-NNNNN.arrow): a path or a URL (s3://...)",
                   positional=True)
    simulate_ranks: int = opt(0, "also show how WORLD trainer ranks split the rows, and prove none is read twice or "
                                 "skipped", lo=1, metavar="WORLD")
    workers: int = opt(0, "data-loader workers per rank, as gato-train's --num-workers (with --simulate-ranks)",
                       lo=0, metavar="W")
    epoch: int = opt(0, "epoch to simulate (with --simulate-ranks)", lo=0)
    seed: int = opt(0, "gato-train's --seed (with --simulate-ranks)")
    data_index: int = opt(0, "position of DIR among gato-train's --data directories (its split seed depends on it)",
                          lo=0)
    split: str | None = opt(None, "the loader's split rule to simulate (default: as gato-train reads DIR: shards for "
                                  "a URL, rows for a local directory)", choices=("rows", "shards"))


def run(args: VerifyOptions) -> int:
    res = verify_dir(args.dir)
    rate = res.bytes / max(res.seconds, 1e-9) / 1e9
    if res.problems:
        for p in res.problems:
            print(p)
        print(f"gato-tokenize verify: {len(res.problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    print(f"ok: {args.dir}: {len(res.shards)} shards, {res.rows:,} rows, {res.tokens:,} tokens, "
          f"{human_bytes(res.bytes)} verified in {res.seconds:.2f} s ({rate:.2f} GB/s)")
    if args.simulate_ranks:
        lengths = np.concatenate([r.row_tokens for r in res.shards]) if res.shards else np.zeros(0, np.int64)
        split = args.split or ("shards" if is_remote(args.dir) else "rows")
        sim = simulate_ranks([r.rows for r in res.shards], lengths, args.simulate_ranks, args.workers,
                             args.epoch, args.seed, args.data_index, split)
        print(format_simulation(sim))
        return 0 if sim["exactly_once"] else 1
    return 0


def register(subparsers) -> None:
    add_command(subparsers, "verify", VerifyOptions, run,
                help="check a shard directory against its manifest and the shard contract",
                description=__doc__.splitlines()[0])
