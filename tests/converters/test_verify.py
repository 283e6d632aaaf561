"""`gato-tokenize verify`: every kind of damage to real shards is found and named (shard, row, column)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from converters.cli import main
from converters.commands.verify import check_shard, simulate_ranks, verify_dir
from schemas.manifest import Manifest
from schemas.shard import open_shard, row_from_table, rows_to_batch, shard_form, write_shard
from tokenizer_kit.layout import CONTINUOUS, SEPARATOR
from tokenizer_kit.files import file_sha256

from tests.support.shards import make_caption_shard_dir, make_rl_shard_dir, make_text_shard_dir


def run(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def rl_copy(tmp_path, rl_shard_dir) -> Path:
    return Path(shutil.copytree(rl_shard_dir, tmp_path / "rl"))


def edit_manifest(d: Path, fn) -> None:
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


def rewrite_row(d: Path, shard: str, index: int, damage, reseal: bool = True, scalars=None) -> str:
    """Rewrite one row of a shard through the real writer path; reseal the manifest's sha/bytes so
    only the content check can see the damage. Returns the row's source_id."""
    path = d / shard
    with pa.memory_map(str(path)) as src:
        table = pa.ipc.open_stream(src).read_all()
    rows = [row_from_table(table, i) for i in range(table.num_rows)]
    damage(rows[index])
    cols = {k: table.column(k).to_pylist() for k in table.column_names}
    rl = "episode_return" in cols
    if scalars:
        scalars(cols, index)
    batch = rows_to_batch(rows, cols["source_id"], cols["task"], cols.get("num_steps"),
                          cols["episode_return"] if rl else None)
    write_shard(path, [batch], batch.schema)
    if reseal:
        def fix(m):
            info = next(s for s in m["shards"] if s["name"] == shard)
            info["sha256"], info["bytes"] = file_sha256(path), path.stat().st_size
        edit_manifest(d, fix)
    return cols["source_id"][index]


# --- intact directories ----------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["rl_shard_dir", "caption_shard_dir", "text_shard_dir"])
def test_intact_directories_pass_with_a_one_line_summary(fixture, request, capsys):
    d = request.getfixturevalue(fixture)
    code, out, err = run(["verify", str(d)], capsys)
    assert code == 0, out + err
    assert out.count("\n") == 1 and out.startswith(f"ok: {d}: 3 shards")


def test_check_shard_counts_what_the_manifest_records(rl_shard_dir):
    m = Manifest.read(rl_shard_dir)
    for info in m.shards:
        rep = check_shard(rl_shard_dir / info.name, m.vocab_layout)
        assert (rep.sha256, rep.bytes, rep.rows, rep.tokens) == (info.sha256, info.bytes, info.rows, info.tokens)
        assert rep.problems == []


# --- file damage -----------------------------------------------------------------------------------

def test_flipped_byte_is_a_sha256_mismatch(rl_copy, capsys):
    p = rl_copy / "shard-00001.arrow"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the patch bytes: still parses, only the hash can tell
    p.write_bytes(bytes(data))
    code, out, _ = run(["verify", str(rl_copy)], capsys)
    assert code == 1
    assert "shard-00001.arrow: manifest says sha256" in out
    assert "shard-00000.arrow" not in out


def test_dropped_shard_is_named_and_totals_disagree(rl_copy, capsys):
    (rl_copy / "shard-00002.arrow").unlink()
    code, out, _ = run(["verify", str(rl_copy)], capsys)
    assert code == 1
    assert "shard-00002.arrow: listed in the manifest but missing" in out
    assert "manifest.json: stats rows 5, the shards hold 4" in out


def test_truncated_shard_is_unreadable_and_short(rl_copy, capsys):
    p = rl_copy / "shard-00000.arrow"
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.truncate(size // 3)
    code, out, _ = run(["verify", str(rl_copy)], capsys)
    assert code == 1
    assert "shard-00000.arrow: unreadable Arrow stream" in out
    assert f"shard-00000.arrow: manifest says bytes {size}, the shard has {size // 3}" in out


@pytest.mark.parametrize("key,edit,expected", [
    ("shard rows", lambda m: m["shards"][1].update(rows=3), "shard-00001.arrow: manifest says rows 3, the shard has 2"),
    ("shard tokens", lambda m: m["shards"][0].update(tokens=1), "shard-00000.arrow: manifest says tokens 1"),
    ("total rows", lambda m: m["stats"].update(rows=6), "manifest.json: stats rows 6, the shards hold 5"),
    ("total tokens", lambda m: m["stats"].update(tokens=7), "manifest.json: stats tokens 7"),
    ("modality", lambda m: m["stats"]["tokens_by_modality"].update(image=1), "stats image tokens 1, the shards hold"),
    ("tasks", lambda m: m["stats"].update(rows_per_task={"pong-like": 4}), "stats rows_per_task"),
    ("returns", lambda m: m["stats"]["episode_return"].update(max=99.0), "stats episode_return max 99.0"),
])
def test_edited_manifest_totals_are_named(rl_copy, capsys, key, edit, expected):
    edit_manifest(rl_copy, edit)
    code, out, _ = run(["verify", str(rl_copy)], capsys)
    assert code == 1
    assert expected in out, out


def test_unlisted_shard_and_changed_tokenizer_are_named(rl_copy, capsys):
    shutil.copyfile(rl_copy / "shard-00000.arrow", rl_copy / "shard-00007.arrow")
    with open(rl_copy / "tokenizer.model", "ab") as f:
        f.write(b"x")
    code, out, _ = run(["verify", str(rl_copy)], capsys)
    assert code == 1
    assert "shard-00007.arrow: complete shard on disk but not listed in the manifest" in out
    assert "tokenizer.model: sha256 differs from the manifest's" in out


def test_directory_without_manifest_is_one_line_error(rl_copy, capsys):
    (rl_copy / "manifest.json").unlink()
    code, out, err = run(["verify", str(rl_copy)], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "no manifest" in err and "3 complete shards" in err


# --- content damage (manifest resealed, so only validation can see it) -----------------------------

def _cont(row):
    return int(np.flatnonzero(row.modality == CONTINUOUS)[0])


def _set(attr, index_fn, value):
    def damage(row):
        getattr(row, attr)[index_fn(row)] = value
    return damage


def _drop_separator(row):
    i = int(np.flatnonzero(row.modality == SEPARATOR)[1])
    row.modality[i], row.tokens[i] = CONTINUOUS, 1024 + 5


def _patch_past_bins(row):
    row.patch_pos[0, 1] = 200


def _swap_steps(row):
    row.step_starts[1], row.step_starts[2] = row.step_starts[2], row.step_starts[1]


def _shift_positions(row):
    start = int(row.step_starts[1])
    row.local_pos[start:start + 3] += 1


CONTENT = [
    ("id past the vocabulary", _set("tokens", _cont, 2049), "column tokens: id outside its modality's range"),
    ("continuous id as separator", _set("tokens", _cont, 2048), "column tokens: id outside its modality's range"),
    ("loss on an observation", _set("loss_mask", _cont, 1), "column loss_mask: loss on a non-text observation token"),
    ("action without loss", _set("loss_mask", lambda r: -1, 0), "column loss_mask: action token without loss"),
    ("loss on the separator", _set("loss_mask", lambda r: int(np.flatnonzero(r.modality == SEPARATOR)[0]), 1),
     "column loss_mask: loss on an image patch or separator"),
    ("separator missing", _drop_separator, "column modality: a step without exactly one separator"),
    ("positions do not restart", _shift_positions, "column local_pos: local positions do not restart at 0"),
    ("position on an action", _set("local_pos", lambda r: -1, 7), "column local_pos: action token with a position"),
    ("patch count", lambda r: setattr(r, "patches", r.patches[:-1]) or setattr(r, "patch_pos", r.patch_pos[:-1]),
     "column patches: patch count differs from the number of -1 slots"),
    ("patch position past 128 bins", _patch_past_bins, "column patch_pos: interval empty or past 128 bins"),
    ("step_starts not monotone", _swap_steps, "column step_starts: not strictly increasing"),
    ("step start outside the row", _set("step_starts", lambda r: -1, 10_000), "column step_starts: offset outside"),
]


@pytest.mark.parametrize("name,damage,expected", CONTENT, ids=[c[0] for c in CONTENT])
def test_damaged_row_is_named_by_shard_row_column(rl_copy, capsys, name, damage, expected):
    sid = rewrite_row(rl_copy, "shard-00001.arrow", 1, damage)
    code, out, _ = run(["verify", str(rl_copy)], capsys)
    assert code == 1
    assert f"shard-00001.arrow: row 1 ({sid}), {expected}" in out, out


def test_num_steps_that_disagrees_with_step_starts(rl_copy, capsys):
    sid = rewrite_row(rl_copy, "shard-00002.arrow", 0, lambda r: None,
                      scalars=lambda cols, i: cols["num_steps"].__setitem__(i, cols["num_steps"][i] + 1))
    code, out, _ = run(["verify", str(rl_copy)], capsys)
    assert code == 1
    assert f"shard-00002.arrow: row 0 ({sid}), column num_steps: differs from the number of step_starts" in out


def test_unresealed_damage_shows_both_hash_and_content(rl_copy, capsys):
    rewrite_row(rl_copy, "shard-00000.arrow", 0, _set("tokens", _cont, 5000), reseal=False)
    code, out, _ = run(["verify", str(rl_copy)], capsys)
    assert code == 1
    assert "shard-00000.arrow: manifest says sha256" in out
    assert "shard-00000.arrow: row 0 (pong-like/episode-0), column tokens" in out


def test_text_and_caption_rows_refuse_positions_and_unmasked_text(tmp_path, caption_shard_dir, text_shard_dir, capsys):
    cap = Path(shutil.copytree(caption_shard_dir, tmp_path / "cap"))
    rewrite_row(cap, "shard-00000.arrow", 1, _set("loss_mask", lambda r: -1, 0))
    txt = Path(shutil.copytree(text_shard_dir, tmp_path / "txt"))
    rewrite_row(txt, "shard-00002.arrow", 0, _set("local_pos", lambda r: 0, 0))
    code, out, _ = run(["verify", str(cap)], capsys)
    assert code == 1 and "shard-00000.arrow: row 1 (digits/1), column loss_mask: text token without loss" in out
    code, out, _ = run(["verify", str(txt)], capsys)
    assert code == 1 and "shard-00002.arrow: row 0 (corpus.txt:4), column local_pos: local position in a row" in out


# --- the loader's split ------------------------------------------------------------------------------

@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2), (3, 1), (4, 3)])
def test_simulated_ranks_read_every_row_once(rl_shard_dir, capsys, world, workers):
    code, out, _ = run(["verify", str(rl_shard_dir), "--simulate-ranks", str(world), "--workers", str(workers)], capsys)
    assert code == 0
    assert f"{world} ranks x {max(1, workers)} workers = {world * max(1, workers)} readers" in out
    assert "every row is read exactly once per epoch: 5 rows" in out
    rows = [int(line.split(":")[1].split()[0]) for line in out.splitlines() if line.startswith("  rank")]
    assert sum(rows) == 5 and len(rows) == world * max(1, workers)


def test_simulation_catches_a_split_that_reads_rows_twice(monkeypatch):
    import schemas.split
    good = schemas.split.assign_rows
    sim = simulate_ranks([10, 7], np.ones(17, np.int64), 2, 2)
    assert sim["exactly_once"] and sum(r["rows"] for r in sim["readers"]) == 17
    # a classic bug: every worker of a rank takes the same slice (worker index ignored)
    def buggy(rps, rank, ws, worker, nw, epoch, seed, shuffle=True):
        return good(rps, rank, ws, 0, 1, epoch, seed)
    monkeypatch.setattr(schemas.split, "assign_rows", buggy)
    bad = simulate_ranks([10, 7], np.ones(17, np.int64), 2, 2)
    assert not bad["exactly_once"] and bad["num_read_twice"] == 17


# --- real converter output -----------------------------------------------------------------------------

def test_real_text_and_caption_conversions_verify_then_fail_when_damaged(tmp_path, sp_model_path, corpus_path, capsys):
    code, _, err = run(["text", corpus_path, "--out", str(tmp_path / "text"), "--text-tokenizer", sp_model_path],
                       capsys)
    assert code == 0, err
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    lines = ["file,caption"]
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
        lines.append(f"{i}.png,a red cube number {i}")
    (imgs / "captions.csv").write_text("\n".join(lines) + "\n")
    code, _, err = run(["captions", str(imgs / "captions.csv"), "--out", str(tmp_path / "cap"),
                        "--text-tokenizer", sp_model_path, "--image-size", "32"], capsys)
    assert code == 0, err
    for kind in ("text", "cap"):
        code, out, err = run(["verify", str(tmp_path / kind)], capsys)
        assert code == 0 and out.startswith("ok:"), out + err
        res = verify_dir(tmp_path / kind)
        assert res.rows == Manifest.read(tmp_path / kind).stats["rows"] > 0
        shard = sorted((tmp_path / kind).glob("shard-*.arrow"))[0]
        data = bytearray(shard.read_bytes())
        data[-20] ^= 0xFF
        shard.write_bytes(bytes(data))
        code, out, _ = run(["verify", str(tmp_path / kind)], capsys)
        assert code == 1 and f"{shard.name}: manifest says sha256" in out


def test_random_damage_never_crashes_and_is_always_reported(tmp_path, rl_shard_dir, caption_shard_dir):
    """Flipped bytes and truncations anywhere (headers, offsets, strings): a list of problems, never a traceback."""
    rng = np.random.default_rng(7)
    for k in range(24):
        src = (rl_shard_dir, caption_shard_dir)[k % 2]
        d = Path(shutil.copytree(src, tmp_path / f"d{k}"))
        p = d / f"shard-0000{rng.integers(0, 3)}.arrow"
        data = bytearray(p.read_bytes())
        if k % 4 == 3:
            data = data[:int(rng.integers(0, len(data)))]
        else:
            for i in rng.integers(0, len(data), int(rng.choice([1, 4, 32]))):
                data[i] ^= int(rng.integers(1, 256))
        p.write_bytes(bytes(data))
        res = verify_dir(d)
        assert res.problems
        assert all(line.startswith(p.name) or line.startswith("manifest.json") for line in res.problems)


def test_damage_repeated_in_every_step_is_still_found(rl_copy, capsys):
    """Identical steps are checked through one of them (the fast path): a fault in all of them shows."""
    sid = rewrite_row(rl_copy, "shard-00002.arrow", 0, lambda r: r.loss_mask.fill(0))
    code, out, _ = run(["verify", str(rl_copy)], capsys)
    assert code == 1
    assert f"shard-00002.arrow: row 0 ({sid}), column loss_mask: action token without loss" in out


# --- a directory in object storage (moto's S3 server through s3fs) ------------------------------------

def test_verify_and_inspect_read_an_s3_directory(s3_server, rl_shard_dir, tmp_path, capsys):
    import s3fs

    from tests.support.s3 import make_bucket, upload_dir
    url = upload_dir(rl_shard_dir, make_bucket("verify") + "/rl")
    code, out, _ = run(["verify", url, "--simulate-ranks", "2"], capsys)
    assert code == 0 and out.startswith(f"ok: {url}: ") and "assign_rows_by_shard" in out
    assert "every row is read exactly once per epoch" in out
    code, out, _ = run(["inspect", url, "--row", "3"], capsys)
    assert code == 0 and out.startswith("row 3 = ")
    code, out, _ = run(["inspect", url], capsys)
    assert code == 0 and out.startswith(f"shard directory {url}") and "DIFFERS" not in out
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    name = sorted(p for p in fs.ls(url.removeprefix("s3://"), detail=False) if p.endswith(".arrow"))[0]
    data = bytearray(fs.cat_file(name))
    data[-50] ^= 1
    fs.pipe_file(name, bytes(data))
    code, out, _ = run(["verify", url], capsys)
    assert code == 1 and f"{name.rsplit('/', 1)[-1]}: manifest says sha256" in out


# --- both schema versions ----------------------------------------------------------------------------

V1_COLUMNS = ["tokens", "loss_mask", "local_pos", "modality", "step_starts", "patches", "patch_pos", "source_id",
              "task"]


@pytest.mark.parametrize("maker", [make_rl_shard_dir, make_caption_shard_dir])
def test_version_1_and_lean_directories_verify_and_read_alike(tmp_path, sp_model_path, maker, capsys):
    v1 = maker(tmp_path / "v1", sp_model_path, version=1)
    lean = maker(tmp_path / "lean", sp_model_path, lean=True)
    for d in (v1, lean):
        result = verify_dir(d)
        assert result.problems == [], result.problems
        code, out, _ = run(["verify", str(d)], capsys)
        assert code == 0, out
    a, b = open_shard(v1 / "shard-00000.arrow"), open_shard(lean / "shard-00000.arrow")
    assert a.schema.metadata[b"gato_kit_schema_version"] == b"1"
    assert a.select(V1_COLUMNS).equals(b.select(V1_COLUMNS))
    assert sum(f.stat().st_size for f in lean.glob("shard-*")) < sum(f.stat().st_size for f in v1.glob("shard-*"))


def test_lean_text_directory_still_verifies(tmp_path, sp_model_path, corpus_path):
    d = make_text_shard_dir(tmp_path / "t", sp_model_path, corpus_path, lean=True)
    assert verify_dir(d).problems == []
    assert shard_form(open_shard(d / "shard-00000.arrow", full=False).schema) == "text"


def test_a_hostile_lean_caption_shard_is_named_on_one_line(tmp_path, sp_model_path, capsys):
    """A stored uint16 sentinel (65535, a patch slot) where the caption's text is, resealed so only
    the content check can see it: one line naming shard, row and column, exit 1."""
    d = make_caption_shard_dir(tmp_path / "lean", sp_model_path, lean=True)
    path = d / "shard-00001.arrow"
    with pa.memory_map(str(path)) as src:
        table = pa.ipc.open_stream(src).read_all()
    tokens = table.column("tokens").to_pylist()
    tokens[1][-2] = 65535
    col = pa.array(tokens, table.schema.field("tokens").type)
    table = table.set_column(0, table.schema.field("tokens"), col)
    write_shard(path, table.to_batches(), table.schema)
    edit_manifest(d, lambda m: next(s for s in m["shards"] if s["name"] == path.name).update(
        sha256=file_sha256(path), bytes=path.stat().st_size))
    code, out, _ = run(["verify", str(d)], capsys)
    lines = [line for line in out.splitlines() if "shard-00001.arrow: row 1 (digits/3)" in line]
    assert code == 1 and lines and "column patches: patch count differs from the number of -1 slots" in lines[0], out
