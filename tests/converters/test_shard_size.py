"""--shard-size is the size of a shard on disk, after compression (issue 23): zstd pixel episodes
used to come out at a few hundred KB against a 256 MB setting."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from converters.writer.shards import ShardWriter, row_nbytes
from schemas.shard import open_shard, rows_to_batch, shard_schema
from schemas.storage import OutDir
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, build_episode

from tests.support.shards import pong_frames


def pixel_batches(episodes: int, steps: int = 12, size: int = 64):
    """Atari-like 64x64 frames (16 patches a step): rows that zstd compresses many times over."""
    layout = VocabLayout(text_vocab_size=32000, eos_id=2)
    spec = EpisodeSpec((FieldSpec("frame", "image", (size, size)),), (FieldSpec("action", "discrete", ()),))
    rng = np.random.default_rng(0)
    for e in range(0, episodes, 4):
        rows = [build_episode({"frame": pong_frames(steps, rng, size)}, {"action": rng.integers(0, 3, steps)},
                              spec, layout) for _ in range(4)]
        yield rows_to_batch(rows, [f"ep{e + i}" for i in range(4)], "pong", episode_returns=[0.0] * 4)


@pytest.mark.parametrize("compression, limit", [("zstd", 100_000), ("lz4", 200_000), ("none", 1_500_000)])
def test_shards_fill_the_shard_size_on_disk(tmp_path, compression, limit):
    w = ShardWriter(OutDir(tmp_path), 0, shard_schema(rl=True), limit, compression)
    estimated = 0
    for batch in pixel_batches(200):
        estimated += int(row_nbytes(batch).sum())
        w.add(batch)
    shards = w.close()
    sizes = [(tmp_path / s.name).stat().st_size for s in shards]
    assert sizes == [s.bytes for s in shards]
    assert all(0.8 * limit <= b <= limit for b in sizes[:-1]), sizes
    assert sizes[-1] <= limit
    rows = pa.concat_tables([open_shard(tmp_path / s.name) for s in shards])
    assert rows.column("source_id").to_pylist() == [f"ep{i}" for i in range(200)]  # every row, in order
    if compression == "zstd":  # the setting counts bytes on disk, not before compression
        assert sum(sizes) < estimated / 5 and len(shards) < estimated / limit / 5
