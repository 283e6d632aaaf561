"""schemas.arrow_numpy against pyarrow's own conversions, and the reason it exists: a process that
reads shards (loader, verify, inspect) never imports pandas."""

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from schemas.arrow_numpy import from_numpy, list_offsets, to_numpy
from tests.support.shards import make_caption_shard_dir, make_rl_shard_dir, make_text_shard_dir

DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_to_numpy_matches_pyarrow_on_slices(dtype):
    rng = np.random.default_rng(0)
    values = (rng.normal(size=50) * 100).astype(dtype)
    arr = pa.array(values)
    for start, length in ((0, 50), (7, 20), (49, 1), (13, 0)):
        part = arr.slice(start, length)
        got = to_numpy(part)
        assert got.dtype == part.to_numpy().dtype
        np.testing.assert_array_equal(got, part.to_numpy())


def test_to_numpy_unpacks_sliced_bools_and_combines_chunks():
    bits = np.random.default_rng(1).integers(0, 2, 37).astype(bool)
    arr = pa.array(bits)
    for start in (0, 3, 8, 11):
        got = to_numpy(arr.slice(start, 20))
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, bits[start:start + 20])
    chunked = pa.chunked_array([pa.array([1, 2], pa.int16()), pa.array([3], pa.int16())])
    np.testing.assert_array_equal(to_numpy(chunked), [1, 2, 3])
    assert to_numpy(pa.array([], pa.bool_())).shape == (0,)


@pytest.mark.parametrize("large", [False, True])
def test_list_offsets_are_the_slices_own(large):
    rows = [[1, 2], [], [3, 4, 5], [6], [7, 8]]
    arr = pa.array(rows, pa.large_list(pa.int32()) if large else pa.list_(pa.int32()))
    for start, length in ((0, 5), (2, 3), (4, 1), (1, 0)):
        part = arr.slice(start, length)
        got = list_offsets(part)
        assert got.dtype == (np.int64 if large else np.int32)
        np.testing.assert_array_equal(got, part.offsets.to_numpy())


def test_from_numpy_round_trips_and_refuses_what_it_cannot_share():
    for dtype in DTYPES:
        x = np.arange(9, dtype=dtype)[::2]  # not contiguous: copied once
        arr = from_numpy(x)
        assert arr.type == pa.from_numpy_dtype(np.dtype(dtype)) and arr.null_count == 0
        np.testing.assert_array_equal(arr.to_numpy(), x)
    with pytest.raises(ValueError):
        from_numpy(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError):
        from_numpy(np.zeros(3, bool))


@pytest.mark.parametrize("version", [1, 3])
def test_reading_shards_does_not_load_pandas(tmp_path, sp_model_path, corpus_path, version):
    """pandas is installed here (datasets needs it), so pyarrow would import it on the first
    numpy conversion: ~90 MB and ~0.14 s in every loader process. Every row kind, lean and full."""
    lean = version != 1
    dirs = [make_text_shard_dir(tmp_path / "text", sp_model_path, corpus_path, lean=lean, version=version),
            make_rl_shard_dir(tmp_path / "rl", sp_model_path, lean=lean, version=version),
            make_caption_shard_dir(tmp_path / "cap", sp_model_path, lean=lean, version=version)]
    code = (
        "import sys\n"
        "from trainer.data import build_loader\n"
        "from converters.commands.verify import verify_dir\n"
        "from schemas.shard import open_shard, row_from_table\n"
        f"dirs = {[str(d) for d in dirs]!r}\n"
        "for d in dirs:\n"
        "    for training in (True, False):\n"
        "        it = iter(build_loader([d], seq_len=64, batch_size=4, training=training))\n"
        "        assert int(next(it).attention_mask.sum()) > 0\n"
        "    assert not verify_dir(d).problems, verify_dir(d).problems\n"
        "    row_from_table(open_shard(d + '/shard-00000.arrow'), 0)\n"
        "print('pandas' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False", out.stdout + out.stderr[-2000:]
