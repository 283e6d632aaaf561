"""Many shards: the manifest's per-shard records in a compact table (shards.arrow) beside a small
JSON head; read back as the same ShardInfo sequence, checked against the head."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

import schemas.manifest as manifest_module
from schemas.manifest import MANIFEST_NAME, Manifest, ManifestError, ShardInfo
from schemas.shard_table import SHARD_TABLE_NAME, ShardTable
from tokenizer_kit.layout import VocabLayout


def synthetic_manifest(n: int, seed: int = 0) -> Manifest:
    """n shards with the writer's names and real-looking sizes and hashes (no shard files)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(1, 5000, n)
    infos = [ShardInfo(f"shard-{i // 4:05d}-{i % 4:03d}.arrow", int(r), int(r) * 700, int(r) * 2900,
                       hashlib.sha256(i.to_bytes(8, "little")).hexdigest()) for i, r in enumerate(rows)]
    return Manifest(layout=VocabLayout(text_vocab_size=32000).to_dict(), converter="text", shards=infos)


def test_200k_shards_make_a_small_head_and_a_compact_table_read_back_the_same(tmp_path):
    m = synthetic_manifest(200_000)
    m.write(tmp_path)
    head, table = (tmp_path / MANIFEST_NAME).stat().st_size, (tmp_path / SHARD_TABLE_NAME).stat().st_size
    assert head < 4096 and table < 60 * 200_000, (head, table)  # JSON was ~190 bytes a shard
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["shards"] == []
    back = Manifest.read(tmp_path)
    assert isinstance(back.shards, ShardTable) and len(back.shards) == 200_000
    assert back.total_rows == m.total_rows and back.total_tokens == m.total_tokens
    assert back.shards[123_456] == m.shards[123_456] and back.shards[-1] == m.shards[-1]
    assert np.array_equal(back.shard_rows(), [s.rows for s in m.shards])
    assert list(back.shards[:5]) == m.shards[:5] and next(iter(back.shards)) == m.shards[0]
    again = tmp_path / "again"
    again.mkdir()
    back.write(again)  # a read manifest writes the same files
    assert (again / SHARD_TABLE_NAME).read_bytes() == (tmp_path / SHARD_TABLE_NAME).read_bytes()


def test_reading_a_compact_manifest_does_not_load_pandas(tmp_path):
    """Every rank reads the shard table: pyarrow imports pandas where one is installed when handed
    a Python list (pa.array), some 90 MB a rank; the check must not hand it one."""
    synthetic_manifest(20_000).write(tmp_path)
    code = (f"import sys; from schemas.manifest import Manifest; m = Manifest.read({str(tmp_path)!r}); "
            "assert len(m.shards) == 20_000; print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_a_small_manifest_stays_plain_json(tmp_path):
    m = synthetic_manifest(20)
    m.write(tmp_path)
    assert not (tmp_path / SHARD_TABLE_NAME).exists()
    assert len(json.loads((tmp_path / MANIFEST_NAME).read_text())["shards"]) == 20
    assert Manifest.read(tmp_path).shards == m.shards


def test_a_table_that_is_missing_replaced_or_cut_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest_module, "COMPACT_SHARDS", 3)
    synthetic_manifest(10).write(tmp_path)
    table = tmp_path / SHARD_TABLE_NAME
    data = table.read_bytes()
    table.write_bytes(data[:-10])
    with pytest.raises(ManifestError, match=f"{SHARD_TABLE_NAME}: sha256 .* differs from the manifest's"):
        Manifest.read(tmp_path)
    (tmp_path / "other").mkdir()
    synthetic_manifest(10, seed=1).write(tmp_path / "other")
    table.write_bytes((tmp_path / "other" / SHARD_TABLE_NAME).read_bytes())  # another directory's table
    with pytest.raises(ManifestError, match="differs from the manifest's"):
        Manifest.read(tmp_path)
    table.unlink()
    with pytest.raises(ManifestError, match=f"{SHARD_TABLE_NAME}: missing") as e:
        Manifest.read(tmp_path)
    assert "\n" not in str(e.value)
