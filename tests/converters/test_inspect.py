"""`gato-tokenize inspect`: the summary, rows decoded back, the PNG, and directories still being written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from converters.cli import main
from converters.text import TextConverter
from converters.writer import WORK_DIR, convert
from converters.render import COLOURS, CELL_H, CELL_W, GAP, strip_image, token_lines
from schemas.manifest import Manifest
from schemas.shard import open_shard, row_from_table
from tokenizer_kit.layout import IMAGE, TEXT
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, build_episode
from tokenizer_kit.text import TextTokenizer
from tokenizer_kit.values import bins_to_continuous

from tests.support.shards import make_caption_shard_dir, make_rl_shard_dir, write_shard_dir


def run(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# --- the summary -------------------------------------------------------------------------------------

def test_summary_of_an_rl_directory_shows_everything(rl_shard_dir, capsys):
    code, out, _ = run(["inspect", str(rl_shard_dir)], capsys)
    assert code == 0
    m = Manifest.read(rl_shard_dir)
    lay = m.vocab_layout
    assert "profile gato: text [0, 512), discrete [0, 1024), continuous [1024, 2048), separator 2048; " \
           "vocab 2049" in out
    assert "tokenizer.model: SentencePiece, 512 pieces, eos 2" in out and "matches the manifest" in out
    assert "converter     rl  env=pong-like" in out
    assert "observations  frame image(32, 32), lives discrete(1,), ram continuous(4,)" in out
    assert "actions       action discrete(1,)" in out
    assert f"3 complete, 5 rows, {m.total_tokens} tokens" in out
    for s in m.shards:
        assert re.search(rf"{s.name}\s+{s.rows}\s+{s.tokens}\s+.*{s.sha256[:12]}", out)
    r = m.stats["episode_return"]
    assert f"returns       count 5  mean {r['mean']:.4g}  std {r['std']:.4g}  min {r['min']:.4g}  max {r['max']:.4g}" in out
    fe = m.stats["field_errors"]["observation/ram"]
    assert re.search(rf"observation/ram\s+{fe['max']:.4g}\s+{fe['mean']:.4g}\s+116", out)
    assert lay.mu == 100.0 and "mu 100, M 256, 1024 bins" in out


def test_summary_json_counts_match_the_shards(rl_shard_dir, caption_shard_dir, text_shard_dir, capsys):
    for d in (rl_shard_dir, caption_shard_dir, text_shard_dir):
        code, out, _ = run(["inspect", str(d), "--json"], capsys)
        assert code == 0
        s = json.loads(out)
        mods = np.zeros(5, np.int64)
        rows = 0
        for p in sorted(Path(d).glob("shard-*.arrow")):
            t = open_shard(p)
            rows += t.num_rows
            mods += np.bincount(t.column("modality").combine_chunks().flatten().to_numpy(), minlength=5)
        assert s["rows"] == rows and s["tokens"] == int(mods.sum())
        assert list(s["tokens_by_modality"].values()) == mods.tolist()
        assert s["layout"]["text_vocab_size"] == 512 and s["tokenizer"]["matches_manifest"] is True
    assert s["episode_return"] is None and s["field_errors"] is None  # the text directory has neither


@pytest.mark.parametrize("maker", [make_rl_shard_dir, make_caption_shard_dir])
def test_lean_and_version_1_directories_inspect_alike(tmp_path, sp_model_path, maker, capsys):
    """Schema version 2's lean forms (uint16 ids, caption columns derived) show the very rows and
    counts a version-1 directory of the same rows shows."""
    outs = []
    for name, form in (("v1", {"version": 1}), ("lean", {"lean": True})):
        d = maker(tmp_path / name, sp_model_path, **form)
        code, row, _ = run(["inspect", str(d), "--row", "1"], capsys)
        assert code == 0
        code, summary, _ = run(["inspect", str(d), "--json"], capsys)
        s = json.loads(summary)
        outs.append((row.replace(str(d), "DIR"), s["tokens_by_modality"], s["rows"]))
    assert outs[0] == outs[1] and "with loss" in outs[0][0]


def test_summary_of_a_directory_still_being_written(tmp_path, caption_shard_dir, capsys):
    d = Path(shutil.copytree(caption_shard_dir, tmp_path / "cap"))
    (d / "manifest.json").unlink()
    (d / ".shard-00003.arrow.tmp123").write_bytes(b"half a shard")  # a writer's temporary file
    code, out, _ = run(["inspect", str(d)], capsys)
    assert code == 0
    assert "no manifest yet (conversion running or interrupted): showing the 3 complete shards" in out
    assert "3 complete, 5 rows, 50 tokens" in out and ".shard-00003" not in out
    assert "image 20 (40.0%)" in out and "text 30 (60.0%)" in out  # counted from the shards themselves
    code, out, _ = run(["inspect", str(d), "--row", "4"], capsys)
    assert code == 0 and "digits/4" in out and "4 image patches, then ids" in out


# --- an unfinished conversion, made by the real writer ---------------------------------------------------

def _text_inputs(directory: Path, files: int = 4, docs: int = 20) -> list[str]:
    words = "the robot arm grasps a red cube and opens the door".split()
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    paths = []
    for f in range(files):
        p = directory / f"part{f}.txt"
        p.write_text("\n\n".join(" ".join(rng.choice(words, rng.integers(5, 60))) for _ in range(docs)) + "\n")
        paths.append(str(p))
    return paths


def _convert(conv, out, tok, **kw):
    return convert(conv, out, layout=tok.layout(), tokenizer_path=tok.path, progress=False, shard_size=20_000, **kw)


def _work(out: Path, capsys) -> tuple[dict, str]:
    code, text, _ = run(["inspect", str(out), "--json"], capsys)
    assert code == 0
    code, line, _ = run(["inspect", str(out)], capsys)
    assert code == 0
    return json.loads(text)["work"], line


def test_unfinished_conversion_counts_what_the_writer_would_not_redo(tmp_path, text_tokenizer, capsys):
    paths = _text_inputs(tmp_path / "in")
    conv = lambda cls=TextConverter: cls(paths, text_tokenizer, text_tokenizer.layout(),  # noqa: E731
                                         split="blank-line", unit_size=1500)
    units = conv().work_units()
    n = len(units)
    assert n >= 8

    out = tmp_path / "out"
    _convert(conv(), out, text_tokenizer, num_partitions=3, partition=0)
    _convert(conv(), out, text_tokenizer, num_partitions=3, partition=1)
    done = [i for i in range(n) if i % 3 != 2]
    w, line = _work(out, capsys)
    assert w["units_total"] == n and w["units_done"] == len(done) and w["rows"] > 0
    assert f"{len(done)} of {n} work units converted" in line
    # a unit whose shard is gone is not done: the writer would convert it again
    marker = json.loads((out / WORK_DIR / "unit-00000.json").read_text())
    (out / marker["shards"][0]["name"]).unlink()
    assert _work(out, capsys)[0]["units_done"] == len(done) - 1
    res = _convert(conv(), out, text_tokenizer)
    assert res.units_converted == n - len(done) + 1  # the writer agrees


def test_unlisted_and_missing_shards_are_flagged(tmp_path, text_shard_dir, capsys):
    d = Path(shutil.copytree(text_shard_dir, tmp_path / "txt"))
    shutil.move(d / "shard-00002.arrow", d / "shard-00009.arrow")
    code, out, _ = run(["inspect", str(d)], capsys)
    assert code == 0
    assert "shard-00002.arrow: listed in the manifest but MISSING" in out
    assert "shard-00009.arrow: on disk, not in the manifest (being written?)" in out
    assert "2 complete, 4 rows" in out


def test_row_of_a_missing_shard_is_an_error_not_another_row(tmp_path, text_shard_dir, capsys):
    d = Path(shutil.copytree(text_shard_dir, tmp_path / "txt"))
    m = Manifest.read(d)
    (d / m.shards[0].name).unlink()
    code, out, err = run(["inspect", str(d), "--row", "0"], capsys)
    assert code == 1 and not out and len(err.strip().splitlines()) == 1
    assert f"row 0 is in {m.shards[0].name}" in err and "missing" in err
    code, out, _ = run(["inspect", str(d), "--row", str(m.shards[0].rows)], capsys)
    assert code == 0 and out.startswith(f"row {m.shards[0].rows} = {m.shards[1].name} row 0")


# --- rows decoded back ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def worked_values_dir(tmp_path_factory, sp_model_path):
    """SPEC 2's worked values as an observation, and actions 0.25 and -1.0."""
    layout = TextTokenizer(sp_model_path).layout()
    spec = EpisodeSpec((FieldSpec("state", "continuous", (4,)), FieldSpec("mode", "discrete", (1,))),
                       (FieldSpec("torque", "continuous", (2,), mu_law=False),))
    obs = {"state": np.array([[0.0, 0.5, -10.0, 256.0], [1000.0, 0.0, 0.0, 0.0]]), "mode": np.array([[7], [3]])}
    act = {"torque": np.array([[0.25, -1.0], [1.0, 0.0]])}
    row = build_episode(obs, act, spec, layout)
    return write_shard_dir(tmp_path_factory.mktemp("worked"), [row], ["worked/0"], layout, "rl", "worked",
                           episode_spec=spec, returns=[1.5], tokenizer_path=sp_model_path)


def test_row_shows_values_next_to_their_ids_one_line_per_step(worked_values_dir, capsys):
    code, out, _ = run(["inspect", str(worked_values_dir), "--row", "0"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("row 0 = shard-00000.arrow row 0: source_id 'worked/0', task worked, num_steps 2, "
                               "episode_return 1.5; 16 tokens, 4 with loss")
    t0, t1 = lines[1], lines[2]
    C = 1024  # continuous offset with a 512-piece text vocab
    ids = [int(x) for x in re.search(r"state=\[(.*?)\]", t0).group(1).replace(":", " ").split()[1::2]]
    assert ids == [C + 512, C + 710, C + 163, C + 1023]  # SPEC 2's worked values
    vals = [float(x) for x in re.search(r"state=\[(.*?)\]", t0).group(1).replace(":", " ").split()[0::2]]
    from tokenizer_kit.layout import VocabLayout
    lay = VocabLayout(512, eos_id=2)
    assert vals == pytest.approx(bins_to_continuous(np.array(ids) - C, lay, True), rel=1e-3)
    assert vals[1] == pytest.approx(0.5, abs=0.01) and vals[2] == pytest.approx(-10, abs=0.2)
    assert "mode=[7:7]" in t0
    assert f"act[torque=[0.251:{C + 640}* -0.999:{C}*]]" in t0  # actions: loss targets, not companded
    assert t0.startswith("t=0 obs{mode=") and " | act[" in t0
    assert t1.startswith("t=1 obs{mode=[3:3], state=[") and f"{C + 1023}" in t1
    assert len(lines) == 3


def test_row_by_source_id_and_out_of_range_rows(rl_shard_dir, capsys):
    code, out, _ = run(["inspect", str(rl_shard_dir), "--source-id", "pong-like/episode-3"], capsys)
    assert code == 0 and out.startswith("row 3 = shard-00001.arrow row 1: source_id 'pong-like/episode-3'")
    steps = [line for line in out.splitlines() if line.startswith("t=")]
    assert len(steps) == int(re.search(r"num_steps (\d+)", out).group(1))
    assert all("frame=<image 32x32, 4 patches>" in s and re.search(r"act\[action=\[\d:\d\*\]\]", s) for s in steps)
    code, out, err = run(["inspect", str(rl_shard_dir), "--row", "5"], capsys)
    assert code == 1 and err.count("\n") == 1 and "row 5 is outside [0, 5)" in err
    code, _, err = run(["inspect", str(rl_shard_dir), "--source-id", "nope"], capsys)
    assert code == 1 and "no row with source_id 'nope'" in err


def test_text_and_caption_rows_decode_to_their_text(text_shard_dir, caption_shard_dir, corpus_path, capsys):
    code, out, _ = run(["inspect", str(text_shard_dir), "--row", "2"], capsys)
    line = open(corpus_path, encoding="utf-8").read().splitlines()[2]
    assert code == 0 and f"text: {line!r}" in out
    assert re.search(r"ids \(\* = loss\): (\d+\* )+2\*$", out.splitlines()[-1])
    code, out, _ = run(["inspect", str(caption_shard_dir), "--row", "1"], capsys)
    assert code == 0
    assert "caption: 'the image shows digit one'" in out and "images: 32x32 (4 patches)" in out
    assert "4 patches" in out.splitlines()[0] and "6 with loss" in out.splitlines()[0]


# --- the PNG ---------------------------------------------------------------------------------------------

def test_token_strip_colours_every_token_by_modality_and_loss(caption_shard_dir, rl_shard_dir):
    row = row_from_table(open_shard(Path(caption_shard_dir) / "shard-00000.arrow"), 1)
    img = strip_image(row, token_lines(row))
    assert img.shape == (CELL_H, len(row) * CELL_W, 3)
    for i, (m, t) in enumerate(zip(row.modality, row.loss_mask, strict=True)):
        top = img[0, i * CELL_W]
        bottom = img[CELL_H - GAP - 1, i * CELL_W]
        assert tuple(top) == COLOURS[int(m)][int(t)]
        assert (tuple(bottom) == (0, 0, 0)) == bool(t)  # the loss-target bar
    assert [int(m) for m in row.modality[:4]] == [IMAGE] * 4 and int(row.modality[4]) == TEXT
    rl = row_from_table(open_shard(Path(rl_shard_dir) / "shard-00000.arrow"), 0)
    lines = token_lines(rl)
    assert [lab for lab, _, _ in lines] == [f"t={t}" for t in range(len(rl.step_starts))]  # one line per step


def test_png_of_rl_and_caption_rows(tmp_path, rl_shard_dir, caption_shard_dir, capsys):
    for d, row, name in ((rl_shard_dir, 0, "rl.png"), (caption_shard_dir, 2, "cap.png")):
        code, _, err = run(["inspect", str(d), "--row", str(row), "--png", str(tmp_path / name)], capsys)
        assert code == 0 and f"wrote {tmp_path / name}" in err
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
            px = np.asarray(im.convert("RGB"))
        # the strip's colours are in the picture: image patches grey, discrete action targets green
        colours = {tuple(c) for c in px.reshape(-1, 3)[::7]}
        assert COLOURS[IMAGE][0] in colours
    code, _, err = run(["inspect", str(rl_shard_dir), "--png", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "--png needs --row" in err


# --- real converter output ------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::UserWarning")
def test_real_atari_like_conversion_inspects_and_verifies(tmp_path, monkeypatch, capsys):
    """A Minari dataset of an Atari-like env (frames, RAM, discrete action) through `gato-tokenize rl`."""
    from tests.support.envs import pong_like_env
    from tests.support.rl_data import make_minari, rollouts
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = pong_like_env()
    eps = rollouts(env, 3, 12, seed=1)
    path = make_minari("ponglike/random-v0", env, eps)
    out = tmp_path / "out"
    code, _, err = run(["rl", str(path), "--out", str(out), "--no-progress", "--text-vocab-size", "1000"], capsys)
    assert code == 0, err
    code, out_text, _ = run(["verify", str(out), "--simulate-ranks", "2", "--workers", "2"], capsys)
    assert code == 0 and "every row is read exactly once per epoch: 3 rows" in out_text
    code, summary, _ = run(["inspect", str(out)], capsys)
    assert code == 0 and "converter     rl" in summary and "obs/ram" in summary  # per-field quantisation error
    code, row, _ = run(["inspect", str(out), "--row", "1", "--png", str(tmp_path / "rl.png")], capsys)
    assert code == 0
    steps = [line for line in row.splitlines() if line.startswith("t=")]
    assert len(steps) == len(eps[1]["actions"])
    for t, line in enumerate(steps):
        assert "obs/frame=<image 32x32, 4 patches>" in line
        assert f"act[action=[{int(eps[1]['actions'][t])}:{int(eps[1]['actions'][t])}*]]" in line
        ram = [float(v.split(":")[0]) for v in re.search(r"obs/ram=\[(.*?)\]", line).group(1).split()]
        assert ram == pytest.approx(eps[1]["observations"]["ram"][t], rel=0.02, abs=0.01)
    assert (tmp_path / "rl.png").stat().st_size > 1000


def test_long_rows_are_shown_cut_with_a_count():
    from converters.commands.inspect.rows import _clip, _ids
    shown = _ids(np.arange(300), np.r_[np.ones(299), 0].astype(np.uint8), 256)
    assert len(shown) == 257 and shown[0] == "0*" and shown[-1] == "... (+44 ids)"
    assert _clip("x" * 5000, 4000).endswith("... (+1000 characters)")


def test_rl_row_without_a_manifest_shows_ids_per_step(tmp_path, rl_shard_dir, capsys):
    d = Path(shutil.copytree(rl_shard_dir, tmp_path / "rl"))
    (d / "manifest.json").unlink()
    code, out, _ = run(["inspect", str(d), "--row", "0"], capsys)
    assert code == 0
    row = row_from_table(open_shard(d / "shard-00000.arrow"), 0)
    steps = [line for line in out.splitlines() if line.startswith("t=")]
    assert len(steps) == len(row.step_starts)
    k = int(row.step_starts[1])  # tokens of step 0: 4 patches, lives, 4 ram values, separator, action
    ids = row.tokens[:k]
    assert steps[0] == (f"t=0 obs{{patch patch patch patch d{ids[4]} " + " ".join(f"c{i}" for i in ids[5:9])
                        + f"}} | act[d{ids[10]}*]")


def test_the_title_of_a_tall_png_stays_above_its_frames():
    import matplotlib.pyplot as plt
    from converters.render import row_figure
    from tokenizer_kit.sequence import Row
    row = Row(np.zeros(4, np.int32), np.zeros(4, np.uint8), np.zeros(4, np.int16), np.zeros(4, np.uint8))
    for frames in (3, 400):  # a short and a very tall mosaic
        images = [(f"t={i}", np.zeros((80, 80, 3), np.uint8)) for i in range(frames)]
        fig = row_figure(row, images, "a title\nof two lines")
        renderer = fig.canvas.get_renderer()
        title = fig._suptitle.get_window_extent(renderer)
        images_ax = fig.axes[0]
        top = images_ax.title.get_window_extent(renderer).y1  # the frames' own heading, above them
        assert title.y0 > top, (frames, title, top)
        plt.close(fig)


def test_summary_reports_tokens_per_epoch(rl_shard_dir, text_shard_dir, capsys):
    """Text: every token but each shard's first is a target once an epoch, in windows of L + 1;
    RL: ceil(n / (L + 1)) windows a row."""
    code, out, _ = run(["inspect", str(text_shard_dir), "--json", "--seq-len", "64"], capsys)
    assert code == 0
    s = json.loads(out)
    e, toks = s["epoch"], np.asarray([sh["tokens"] for sh in s["shards"]])
    assert e["kind"] == "text" and e["seq_len"] == 64 and e["directory_tokens"] == s["tokens"]
    assert e["distinct_targets"] == s["tokens"] - int(np.count_nonzero(toks))
    assert e["sequences"] == int(np.sum(np.ceil((toks - 1) / 64)))
    code, out, _ = run(["inspect", str(text_shard_dir), "--seq-len", "64"], capsys)
    assert f"{e['distinct_targets']:,} of {s['tokens']:,} tokens as targets, each once" in out
    code, out, _ = run(["inspect", str(rl_shard_dir), "--json", "--seq-len", "32"], capsys)
    e = json.loads(out)["epoch"]
    lens = np.concatenate([np.diff(open_shard(p).column("tokens").combine_chunks().offsets.to_numpy())
                           for p in sorted(Path(rl_shard_dir).glob("shard-*.arrow"))])
    assert e["kind"] == "rl" and e["distinct_targets"] is None
    assert e["sequences"] == int(np.sum(np.maximum(1, np.ceil(lens / 33)))) and e["tokens"] >= 0.99 * lens.sum()
