"""The one reader of shard directories: manifest, shards memory-mapped, rows as numpy views.

A directory is a local path or an fsspec URL. Local shards are mapped in place (zero-copy: a row
is a few slices of the mapped file); remote ones are read through a ShardCache of copies checked
against the manifest's sha256. Shards written with Arrow IPC buffer compression (lz4, zstd) read
the same way; Arrow decompresses each record batch as it is read.

Writers rename a shard into place only when it is complete (temporary files start with '.') and
write manifest.json last, so a reader can look at a directory still being written: with a
manifest, the listed shards count; without one, every `shard-N.arrow` present is complete.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from tokenizer_kit.errors import first_line
from tokenizer_kit.files import atomic_path
from tokenizer_kit.layout import NO_POSITION, PATCH_SLOT, VocabLayout
from tokenizer_kit.text import TextTokenizer

from .arrow_numpy import list_offsets, to_numpy
from .cache import ShardCache
from .errors import ReaderError
from .manifest import MANIFEST_NAME, TOKENIZER_NAME, Manifest, ManifestError, ShardInfo
from .shard import PATCH_BYTES, SHARD_NAME_RE, SLOT_ID, is_text_form, open_shard
from .split import global_row, locate_rows
from .storage import is_remote, join, list_names, local_path, read_bytes, remote_fs, storage_error
from .validate import Problem, validate_table

SHARD_RE = re.compile(SHARD_NAME_RE)


# --- rows as views of a mapped record batch ---------------------------------------------------------

@dataclass
class RowView:
    """One row as numpy views into the mapped shard (no copy)."""

    tokens: np.ndarray  # int32 (or a lean shard's uint16, as stored)
    loss_mask: np.ndarray  # uint8
    local_pos: np.ndarray  # int16
    step_starts: np.ndarray  # int32
    patches: np.ndarray  # (P, 768) uint8
    patch_pos: np.ndarray  # (P, 4) uint8
    slot: int = PATCH_SLOT  # the id that marks a patch slot in `tokens` (uint16 RL shards: SLOT_ID)

    def ids(self, a: int, b: int) -> np.ndarray:
        """Tokens [a, b) as version 1 has them (int32 with -1 at patch slots): the view itself, or
        for stored uint16 ids with another slot id a copy of just this slice."""
        t = self.tokens[a:b]
        if self.slot == PATCH_SLOT:
            return t
        out = t.astype(np.int32)
        out[t == self.slot] = PATCH_SLOT
        return out


@dataclass
class BatchView:
    """Offsets and flat values of one record batch, all zero-copy views of the mapped file."""

    tok_off: np.ndarray
    tokens: np.ndarray
    loss_mask: np.ndarray
    local_pos: np.ndarray
    ss_off: np.ndarray
    step_starts: np.ndarray
    pt_off: np.ndarray
    patches: np.ndarray
    patch_pos: np.ndarray
    slot: int = PATCH_SLOT  # as RowView.slot

    @property
    def num_rows(self) -> int:
        return len(self.tok_off) - 1

    def row(self, i: int) -> RowView:
        a, b = self.tok_off[i:i + 2].tolist()
        sa, sb = self.ss_off[i:i + 2].tolist()
        pa_, pb = self.pt_off[i:i + 2].tolist()
        return RowView(self.tokens[a:b], self.loss_mask[a:b], self.local_pos[a:b], self.step_starts[sa:sb],
                       self.patches[pa_:pb], self.patch_pos[pa_:pb], self.slot)


def _flat(arr: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of a list array; offsets index `values` directly."""
    return list_offsets(arr), to_numpy(arr.values)  # (bit-packed bool masks: one uint8 copy per batch)


def batch_view(batch: pa.RecordBatch) -> BatchView:
    """Views of a record batch's list columns (offsets are not read: check_batch proves them).
    A lean text batch's derived columns are broadcast constants: no memory per token; a
    lean RL batch's uint16 ids stay as stored (RowView.ids widens a sample's slice)."""
    if is_text_form(batch.schema):
        tok_off, tokens = _flat(batch.column("tokens"))
        n, none = len(tokens), np.zeros(batch.num_rows + 1, np.int32)
        return BatchView(tok_off, tokens, np.broadcast_to(np.uint8(1), (n,)),
                         np.broadcast_to(np.int16(NO_POSITION), (n,)), none, np.zeros(0, np.int32), none,
                         np.zeros((0, PATCH_BYTES), np.uint8), np.zeros((0, 4), np.uint8))
    tok_off, tokens = _flat(batch.column("tokens"))
    _, loss_mask = _flat(batch.column("loss_mask"))
    _, local_pos = _flat(batch.column("local_pos"))
    ss_off, step_starts = _flat(batch.column("step_starts"))
    pcol = batch.column("patches")
    pvals = pcol.values
    npv = len(pvals) + pvals.offset
    patches = (np.frombuffer(pvals.buffers()[1], np.uint8, count=npv * PATCH_BYTES).reshape(npv, PATCH_BYTES)
               if npv else np.zeros((0, PATCH_BYTES), np.uint8))
    qvals = batch.column("patch_pos").values  # fixed_size_list<uint8, 4>
    nq = len(qvals) + qvals.offset
    flat_q = to_numpy(qvals.values)
    patch_pos = flat_q[:nq * 4].reshape(nq, 4) if nq else np.zeros((0, 4), np.uint8)
    slot = SLOT_ID if tokens.dtype == np.uint16 else PATCH_SLOT  # a lean RL batch's ids, as stored
    return BatchView(tok_off, tokens, loss_mask, local_pos, ss_off, step_starts, list_offsets(pcol), patches,
                     patch_pos, slot)


def check_batch(batch: pa.RecordBatch, layout: VocabLayout) -> Problem | None:
    """The first way a record batch breaks the contract, or None: Arrow's own structure (list
    offsets monotonic and inside their values) and then schemas.validate (its fast path for the
    common shapes), so a reader never indexes a row that lies. Rows count from the batch's first."""
    try:
        batch.validate(full=True)
    except pa.ArrowInvalid as e:
        return Problem(None, _column_of(str(e), batch.schema.names), f"invalid Arrow data ({first_line(e)})")
    problems = validate_table(pa.Table.from_batches([batch]), layout)
    return problems[0] if problems else None


def _column_of(message: str, names: list[str]) -> str:
    """The column an Arrow validation message is about (it says 'Column N: ...'), else '?'."""
    m = re.search(r"[Cc]olumn (\d+)", message)
    return names[int(m.group(1))] if m and int(m.group(1)) < len(names) else "?"


# --- a directory ----------------------------------------------------------------------------------

def _manifest_copy(cache: ShardCache, url: str) -> Path:
    return cache.root / "manifests" / f"{hashlib.sha256(url.encode()).hexdigest()}.json"


def _remember_manifest(cache: ShardCache, url: str, manifest: Manifest) -> None:
    """Keep the manifest read from `url` beside the cached shards (atomically; best effort)."""
    if manifest.shard_table is not None:  # a compact manifest's table stays in the store: read there each start
        return
    p = _manifest_copy(cache, url)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(p) as tmp:
            Path(tmp).write_text(manifest.to_json())
    except OSError:
        pass


@dataclass
class ShardFile:
    """One complete shard: its name, where it is (a path or URL), the manifest's record (None when unlisted)."""

    name: str
    path: str
    info: ShardInfo | None = None


class ShardFiles(Sequence["ShardFile"]):
    """Every shard a manifest lists, as ShardFile records made when asked for (a rank of a
    200,000-shard directory touches only its own)."""

    def __init__(self, root: str, infos: Sequence[ShardInfo]):
        self.root, self.infos = root, infos

    def __len__(self) -> int:
        return len(self.infos)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        s = self.infos[i]
        return ShardFile(s.name, join(self.root, s.name), s)


@dataclass
class ShardDir:
    """A shard directory, local or remote. `shards` are the manifest's shards present, in order."""

    path: str  # as given: a local path or a URL
    manifest: Manifest | None
    shards: Sequence[ShardFile]  # ShardFiles for a manifest's shards, else a list
    missing: list[str] = field(default_factory=list)  # listed in the manifest, absent
    unlisted: list[str] = field(default_factory=list)  # complete, not (yet) in the manifest
    cache: ShardCache | None = None  # remote shards' local copies (a temporary one when None)
    _rows: np.ndarray | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, cache: ShardCache | None = None, split: str | None = None,
             listing: bool = False) -> "ShardDir":
        """Read the manifest if there is one (a malformed one is an error) and list complete shards;
        with `split` ("train" or "test"), only that split's shards (rows numbered over them).

        A remote directory whose manifest names its shards is not listed (a listing of a big
        prefix is thousands of paged requests per rank): a shard missing from the store is then an
        error when it is fetched. `listing=True` lists it anyway, for `missing` and `unlisted`
        (what verify and inspect report). A local directory is always listed (one cheap call)."""
        text = os.fspath(path)
        if is_remote(text) and cache is not None and not listing:
            warm = cls._warm(text.rstrip("/"), cache, split)
            if warm is not None:
                return warm
        if is_remote(text):
            text = text.rstrip("/")
            try:
                manifest = Manifest.parse(read_bytes(join(text, MANIFEST_NAME)), join(text, MANIFEST_NAME),
                                          lambda name: read_bytes(join(text, name)))
            except FileNotFoundError:
                manifest = None
            if manifest is not None and not listing:
                if cache is not None:
                    _remember_manifest(cache, text, manifest)
                if split is not None:
                    manifest = manifest.only(split)
                return cls(text, manifest, ShardFiles(text, manifest.shards), cache=cache)
            names = list_names(text)
        else:
            root = local_path(text)
            if not root.is_dir():
                raise FileNotFoundError(f"{root}: not a directory")
            names = sorted(p.name for p in root.iterdir() if p.is_file())
            manifest = Manifest.read(root) if MANIFEST_NAME in names else None
        on_disk = [n for n in names if SHARD_RE.match(n)]
        if manifest is None:
            return cls(text, None, [ShardFile(n, join(text, n)) for n in on_disk], cache=cache)
        present, listed, full = set(on_disk), [s.name for s in manifest.shards], manifest
        if split is not None:
            manifest = manifest.only(split)
        shards = [ShardFile(s.name, join(text, s.name), s) for s in manifest.shards if s.name in present]
        out = cls(text, manifest, shards, missing=[s.name for s in manifest.shards if s.name not in present],
                  unlisted=[n for n in on_disk if n not in set(listed)], cache=cache)
        if is_remote(text) and cache is not None and present.issuperset(listed):
            _remember_manifest(cache, text, full)
        return out

    @classmethod
    def _warm(cls, url: str, cache: ShardCache, split: str | None) -> "ShardDir | None":
        """The directory from the cache alone, when it holds the manifest last read from `url`
        and every shard it lists (a warm start: no request). Objects under a URL are written
        once (shards named by unit, manifest last), so a cached manifest stays true until the
        directory is converted anew in place; remove the cache's manifests/ to read it again."""
        p = _manifest_copy(cache, url)
        try:
            manifest = Manifest.parse(p.read_bytes(), str(p))
        except (OSError, ManifestError):
            return None
        if split is not None:
            manifest = manifest.only(split)
        if not all(cache.path_of(s.sha256).is_file() for s in manifest.shards):
            return None
        return cls(url, manifest, [ShardFile(s.name, join(url, s.name), s) for s in manifest.shards], cache=cache)

    @property
    def remote(self) -> bool:
        return is_remote(self.path)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def local_root(self) -> Path | None:
        """The directory on this machine (None when remote)."""
        return None if self.remote else local_path(self.path)

    # --- what the manifest says -------------------------------------------------------------------
    @property
    def layout(self) -> VocabLayout:
        if self.manifest is None:
            raise ManifestError(f"{join(self.path, MANIFEST_NAME)}: no manifest yet, so the vocab layout is unknown")
        return self.manifest.vocab_layout

    @property
    def tokenizer_path(self) -> Path | None:
        """The directory's SentencePiece model on this machine (a remote one is downloaded once)."""
        if not self.remote:
            p = local_path(self.path) / TOKENIZER_NAME
            return p if p.is_file() else None
        p = self._scratch() / TOKENIZER_NAME
        if not p.is_file():
            try:
                data = read_bytes(join(self.path, TOKENIZER_NAME))
            except FileNotFoundError:
                return None
            with atomic_path(p) as tmp:  # a torn copy would pass is_file() on the next call
                tmp.write_bytes(data)
        return p

    def text_tokenizer(self):
        """The directory's SentencePiece model, or None when it has none (text then shows as ids)."""
        p = self.tokenizer_path
        return TextTokenizer(p) if p is not None else None

    # --- shards -------------------------------------------------------------------------------------
    def _scratch(self) -> Path:
        """A temporary folder for this object's downloads, removed with it."""
        if "_tmp" not in self.__dict__:
            self._tmp = Path(tempfile.mkdtemp(prefix="gato-kit-"))
            weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
        return self._tmp

    def file(self, i: int, checked: bool = True) -> Path:
        """Shard i on this machine: the file itself, or a local copy of a remote one, checked
        against the manifest's sha256 when the manifest lists it (checked=False: a private copy,
        as is, for a caller that hashes it itself)."""
        s = self.shards[i]
        if not self.remote:
            return local_path(s.path)
        if s.info is None or not checked:
            dst = self._scratch() / s.name
            if not dst.is_file():
                fs, p = remote_fs(s.path)
                try:
                    fs.get_file(p, str(dst))
                except Exception as e:
                    dst.unlink(missing_ok=True)
                    raise storage_error(s.path, e) from None
            return dst
        if self.cache is None:
            self.cache = ShardCache(self._scratch() / "shards")
        return self.cache.fetch(s.path, s.name, s.info.sha256, s.info.bytes)

    def table(self, i: int, full: bool = True) -> pa.Table:
        """Shard i, memory-mapped (a remote one from its proven cache copy, pinned while mapping);
        `full` as in open_shard (False: a lean text shard's stored columns alone)."""
        s = self.shards[i]
        try:
            if self.remote and s.info is not None:
                if self.cache is None:
                    self.cache = ShardCache(self._scratch() / "shards")
                return self.cache.open(s.path, s.name, s.info.sha256, s.info.bytes,
                                       lambda mapped: open_shard(mapped, full))
            return open_shard(self.file(i), full)
        except (pa.ArrowInvalid, OSError) as e:
            raise ReaderError(f"{s.path}: unreadable shard ({first_line(e)})") from None

    @property
    def rows_per_shard(self) -> np.ndarray:
        """Rows of each present shard (the manifest's count, else the shard's own), int64: one
        array, not 200,000 Python ints, for a rank of a large directory."""
        if (self._rows is None and isinstance(self.shards, ShardFiles)
                and self.manifest is not None):  # all listed: the manifest's column
            self._rows = self.manifest.shard_rows()
        if self._rows is None:
            self._rows = np.asarray([s.info.rows if s.info is not None else self.table(i).num_rows
                                     for i, s in enumerate(self.shards)], np.int64)
        return self._rows

    @property
    def num_rows(self) -> int:
        """Rows of the directory: the manifest's total when there is one, else the shards present."""
        return self.manifest.total_rows if self.manifest is not None else int(self.rows_per_shard.sum())

    def locate(self, row: int) -> tuple[int, int]:
        """Global row index -> (index into `shards`, row inside it). Rows are numbered through the
        manifest's list, so a row of a missing shard is an error, never another shard's row."""
        if not 0 <= row < self.num_rows:
            raise ReaderError(f"row {row} is outside [0, {self.num_rows}) of {self.path}")
        names = [s.name for s in self.manifest.shards] if self.manifest is not None else [s.name for s in self.shards]
        counts = self.manifest.shard_rows() if self.manifest is not None else self.rows_per_shard
        shard, inside = locate_rows(counts, np.asarray([row]))
        k = int(shard[0])
        index = {s.name: i for i, s in enumerate(self.shards)}
        if names[k] not in index:
            raise ReaderError(f"row {row} is in {names[k]}, which the manifest of {self.path} lists but is missing")
        return index[names[k]], int(inside[0])

    def global_row(self, shard: int, row: int) -> int:
        """(index into `shards`, row) -> the global row number locate() takes."""
        name = self.shards[shard].name
        names = [s.name for s in self.manifest.shards] if self.manifest is not None else [s.name for s in self.shards]
        counts = self.manifest.shard_rows() if self.manifest is not None else self.rows_per_shard
        return global_row(counts, names.index(name), row)

    def find_source(self, source_id: str) -> tuple[int, int]:
        """(shard index, row) of the first row whose source_id is `source_id`."""
        import pyarrow.compute as pc  # noqa: PLC0415 - start-up time: pyarrow.compute costs ~90 ms, needed on few paths
        for i in range(len(self.shards)):
            hits = pc.index(self.table(i).column("source_id"), source_id).as_py()
            if hits >= 0:
                return i, hits
        raise ReaderError(f"no row with source_id {source_id!r} in {self.path}")
