"""RLDS (Open X-Embodiment TFDS folders) -> rows without TensorFlow: TFRecord files written by
the `tfrecord` package in the feature layout of an OXE features.json (two cameras, a state
vector, a 7-d action, a language instruction). Rows equal those built from the same decoded
steps; a damaged record (bad CRC, cut off) or an undeclared feature is one line naming file,
record and episode, or that episode skipped alone."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from converters.cli import main as tokenize_main
from converters.rl.sources.tfrecord import count_records, read_records
from tests.support.robot_data import make_rlds_episodes, write_rlds
from schemas.manifest import Manifest
from schemas.reader import ShardDir
from schemas.shard import row_from_table
from tokenizer_kit.sequence import build_episode
from tokenizer_kit.text import TextTokenizer

LENGTHS = [5, 4, 6, 3, 5]


def tokenize(*argv) -> int:
    return tokenize_main([str(a) for a in argv])


def error_lines(text: str) -> list[str]:
    assert "Traceback" not in text
    return [line for line in text.splitlines() if "error" in line]


def table_rows(out: Path):
    sd = ShardDir.open(out)
    return [(t.column("source_id")[k].as_py(), row_from_table(t, k))
            for t in (sd.table(i) for i in range(len(sd.shards))) for k in range(t.num_rows)]


@pytest.fixture(scope="module")
def episodes():
    return make_rlds_episodes(LENGTHS, seed=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, episodes):
    return write_rlds(tmp_path_factory.mktemp("rlds") / "ur5_demo" / "0.1.0", episodes)


def _jpeg(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def test_rows_equal_the_decoded_steps(folder, episodes, tmp_path, sp_model_path):
    out = tmp_path / "out"
    assert tokenize("rl", folder, "--out", out, "--text-tokenizer", sp_model_path, "--episodes-per-unit", 2) == 0
    m = Manifest.read(out)
    spec, layout, tok = m.spec, m.vocab_layout, TextTokenizer(sp_model_path)
    assert {f.name: f.kind for f in spec.observations} == {
        "obs/image": "image", "obs/hand_image": "image", "obs/state": "continuous", "obs/language_instruction": "text"}
    assert [(f.name, f.kind, f.shape) for f in spec.actions] == [("action", "continuous", (7,))]
    got = table_rows(out)
    assert [sid for sid, _ in got] == [f"ur5_demo/episode_{i}" for i in range(len(LENGTHS))]
    for (_, row), e in zip(got, episodes):
        expected = build_episode({"obs/image": np.stack([_jpeg(b) for b in e.images["image"]]),
                                  "obs/hand_image": np.stack([_jpeg(b) for b in e.images["hand_image"]]),
                                  "obs/state": e.state, "obs/language_instruction": [e.instruction] * e.length},
                                 {"action": e.action}, spec, layout, tok)
        np.testing.assert_array_equal(row.tokens, expected.tokens)
        np.testing.assert_array_equal(row.patches, expected.patches)
    assert m.typed_stats.episode_return.count == len(LENGTHS)  # every episode's reward sums to 1
    assert m.typed_stats.episode_return.max == pytest.approx(1.0)


def test_reader_checks_both_crcs(folder):
    f = sorted(folder.glob("*.tfrecord-*"))[0]
    assert count_records(str(f)) == 3
    records = list(read_records(str(f)))
    assert [i for i, _ in records] == [0, 1, 2] and all(isinstance(d, bytes) for _, d in records)


def _flip_data_byte(root: Path):
    f = sorted(root.glob("*.tfrecord-*"))[0]
    data = bytearray(f.read_bytes())
    n = int.from_bytes(data[:8], "little")
    second = 12 + n + 4  # start of record 1
    data[second + 12 + 40] ^= 0x01  # a bit inside record 1's data
    f.write_bytes(bytes(data))
    return f"{f.name}: record 1: bad CRC of the data (episode 1)", [0, 2, 3, 4]


def _cut_off(root: Path):
    f = sorted(root.glob("*.tfrecord-*"))[1]
    data = f.read_bytes()
    f.write_bytes(data[:-30])  # the last record (episode 4) loses its end
    return f"{f.name}: record 1: cut off", [0, 1, 2, 3]


def _cut_length(root: Path):
    f = sorted(root.glob("*.tfrecord-*"))[0]
    data = bytearray(f.read_bytes())
    data[3] ^= 0x10  # record 0's length: its CRC no longer matches, and nothing after it can be found
    f.write_bytes(bytes(data))
    return f"{f.name}: record 0: bad CRC of the length (episode 0)", [3, 4]


CASES = {"bad_crc": _flip_data_byte, "cut_off": _cut_off, "bad_length": _cut_length}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_records(case, folder, tmp_path, sp_model_path, capsys):
    root = Path(shutil.copytree(folder, tmp_path / "ds"))
    needle, kept = CASES[case](root)
    capsys.readouterr()
    assert tokenize("rl", root, "--out", tmp_path / "fail", "--text-tokenizer", sp_model_path) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "fail" / "manifest.json").exists()
    assert tokenize("rl", root, "--out", tmp_path / "skip", "--text-tokenizer", sp_model_path,
                    "--on-error", "skip", "--episodes-per-unit", 1) == 0
    ids = [int(sid.rsplit("_", 1)[1]) for sid, _ in table_rows(tmp_path / "skip")]
    assert ids == kept


def test_undeclared_feature_is_that_episodes_error(episodes, tmp_path, sp_model_path, capsys):
    n = episodes[1].length
    root = write_rlds(tmp_path / "ds", episodes, extra={1: {"steps/observation/depth": ([0.5] * n, "float")}})
    capsys.readouterr()
    assert tokenize("rl", root, "--out", tmp_path / "fail", "--text-tokenizer", sp_model_path) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "record 1 (episode 1): feature 'steps/observation/depth' is not declared in " \
                             "features.json" in err[0], err
    assert tokenize("rl", root, "--out", tmp_path / "skip", "--text-tokenizer", sp_model_path,
                    "--on-error", "skip", "--episodes-per-unit", 1) == 0
    assert [int(sid.rsplit("_", 1)[1]) for sid, _ in table_rows(tmp_path / "skip")] == [0, 2, 3, 4]


def _png(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG")
    return b.getvalue()


def test_step_images_decode_into_one_array_or_are_refused_naming_the_step():
    """JPEGs decode straight into the episode's array: the same pixels simplejpeg gives alone; a
    step of another size than step 0 (shape left open in features.json) or a 16-bit image (no
    silent narrowing to uint8) is that episode's error naming feature and step."""
    import simplejpeg
    from converters.rl.sources.rlds import Declared, _decode_images
    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 256, (32, 48, 3), np.uint8) for _ in range(3)]
    jpegs = [simplejpeg.encode_jpeg(p, 90) for p in pics]
    got = _decode_images(Declared("steps/observation/image", "image", (32, 48, 3), "uint8", True), jpegs)
    assert got.shape == (3, 32, 48, 3) and got.flags.c_contiguous
    for g, j in zip(got, jpegs):
        assert np.array_equal(g, simplejpeg.decode_jpeg(j))
    grey = _decode_images(Declared("steps/observation/depth", "image", (32, 48, 1), "uint8", True),
                          [_png(p[..., 0]) for p in pics])
    assert np.array_equal(grey, np.stack([p[..., 0] for p in pics]))
    open_shape = Declared("steps/observation/image", "image", (-1, -1, 3), "uint8", True)
    other = simplejpeg.encode_jpeg(rng.integers(0, 256, (16, 48, 3), np.uint8), 90)
    with pytest.raises(ValueError, match=r"'steps/observation/image', step 2: image \(16, 48\), step 0 \(32, 48\)"):
        _decode_images(open_shape, jpegs[:2] + [other])
    deep = _png((rng.integers(0, 65536, (32, 48))).astype(np.uint16))
    with pytest.raises(ValueError, match=r"'steps/observation/depth', step 1: not a readable image \(uint16 pixels"):
        _decode_images(Declared("steps/observation/depth", "image", (32, 48, 1), "uint8", True),
                       [_png(pics[0][..., 0]), deep])
