"""The streaming loader: row coverage per epoch, exact resume, windows, prompts, batch alignment."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from tests.support.loader_data import batch_targets, expected_targets, make_caption_dir, make_rl_dir, make_text_dir, write_dir
from schemas.manifest import ManifestError
from schemas.shard import open_shard, row_from_table
from tokenizer_kit.images import eval_positions, normalize_patches
from tokenizer_kit.layout import PATCH_SLOT, LayoutError, VocabLayout
from tokenizer_kit.text_rows import build_text_row
from trainer.batch import Batch
from trainer.data import build_loader, parse_data_arg
from trainer.source import DataError
from schemas.split import locate_rows

LAYOUT = VocabLayout(text_vocab_size=32000, eos_id=2)
FIELDS = ("tokens", "targets", "loss_mask", "attention_mask", "local_pos", "patches", "patch_index", "patch_row",
          "patch_col", "task_id")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    return {
        "rl": str(make_rl_dir(root / "rl", LAYOUT, episodes=30, steps=(3, 40), tasks=("reach", "push"))),
        "pix": str(make_rl_dir(root / "pix", LAYOUT, episodes=12, steps=(2, 10), pixels=True, tasks=("pong", "maze"),
                               rows_per_shard=5)),
        "short": str(make_rl_dir(root / "short", LAYOUT, episodes=40, steps=(3, 8), seed=4, tasks=("tiny",))),
        "text": str(make_text_dir(root / "text", LAYOUT, docs=50, length=(5, 300))),
        "cap": str(make_caption_dir(root / "cap", LAYOUT, pairs=30)),
        "tagged": str(_tagged_text_dir(root / "tagged", 37)),
    }


def _tagged_text_dir(out, docs: int):
    """Document i is the id 10+i repeated (then end-of-text), so every token names its row; short
    documents (under a window) and long ones (up to three windows of 48) mixed."""
    rng = np.random.default_rng(3)
    rows = [build_text_row(np.full(int(rng.integers(4, 60) if i % 3 else rng.integers(60, 150)), 10 + i), LAYOUT)
            for i in range(docs)]
    return write_dir(out, rows, LAYOUT, "text", "tagged", rows_per_shard=10, batch_rows=4)


def _row(path: str, r: int):
    """Row r read the slow, independent way (schemas.shard.row_from_table)."""
    from schemas.manifest import Manifest
    m = Manifest.read(path)
    shard, i = locate_rows([s.rows for s in m.shards], np.array([r]))
    return row_from_table(open_shard(f"{path}/{m.shards[int(shard[0])].name}"), int(i[0]))


def _sequences(batch: Batch) -> list[np.ndarray]:
    """Each sample's full n tokens back from (inputs, shifted targets)."""
    out = []
    for b in range(batch.tokens.shape[0]):
        n = int(batch.attention_mask[b].sum())
        out.append(np.concatenate([batch.tokens[b, :n].numpy(), batch.targets[b, n - 1:n].numpy()]))
    return out


def _doc_runs(seq: np.ndarray) -> list[int]:
    """Row ids of the documents in a tagged sequence: maximal runs of one id, eos excluded."""
    ids = seq[seq != LAYOUT.eos_id]
    keep = np.ones(len(ids), bool)
    keep[1:] = ids[1:] != ids[:-1]
    # two documents of the same id cannot be adjacent: each is closed by an eos
    starts = np.flatnonzero(np.concatenate([[True], (seq[1:] != seq[:-1])]) & (seq != LAYOUT.eos_id))
    return (seq[starts] - 10).tolist()


# --- coverage ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_one_pass_sees_every_token_once(dirs, world_size, num_workers):
    """Evaluation: one pass of long and short documents predicts every token once (windows of
    L + 1 overlapping by one), whatever the ranks and workers."""
    got = Counter()
    for rank in range(world_size):
        loader = build_loader([dirs["tagged"]], seq_len=48, batch_size=3, seed=7, num_workers=num_workers,
                              rank=rank, world_size=world_size, training=False)
        got += batch_targets(list(loader))
    assert got == expected_targets(dirs["tagged"])


def test_v2_text_shards_give_the_same_batches_as_full_ones(tmp_path):
    """Tokens-only uint16 text shards (schema version 2) read as the same batches as shards that
    store every column, in training and evaluation."""
    from schemas.shard import shard_schema
    rng = np.random.default_rng(5)
    rows = [build_text_row(rng.integers(3, 30000, size=int(rng.integers(5, 200))), LAYOUT) for _ in range(40)]
    full = write_dir(tmp_path / "full", rows, LAYOUT, "text", "t", rows_per_shard=15, batch_rows=6)
    lean = write_dir(tmp_path / "lean", rows, LAYOUT, "text", "t", rows_per_shard=15, batch_rows=6,
                     schema=shard_schema(False, text=True, vocab_size=LAYOUT.vocab_size))
    size = {d: sum(p.stat().st_size for p in d.glob("shard-*")) for d in (full, lean)}
    assert size[lean] < 0.4 * size[full]
    for training, workers in ((True, 0), (True, 2), (False, 0)):
        a = _take(build_loader([str(full)], 32, 4, seed=1, training=training, num_workers=workers), 6)
        b = _take(build_loader([str(lean)], 32, 4, seed=1, training=training, num_workers=workers), 6)
        assert len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("kind", ["rl_state", "rl_pixels", "captions"])
def test_v2_lean_rl_and_caption_shards_give_the_same_batches_as_full_ones(tmp_path, kind, monkeypatch):
    """uint16 RL shards and caption shards with derived per-token columns (schema version 2) read
    as the same batches as shards that store every column as int32, in training and evaluation;
    their mapped pages are released (the derived columns on the heap are not), reading the same."""
    import pyarrow as pa

    import trainer.mapped as mapped
    import trainer.stream as td
    from schemas.shard import shard_schema
    from tests.support.loader_data import pixel_episode, state_episode
    from tokenizer_kit.text_rows import build_caption_row
    rng = np.random.default_rng(6)
    rl = kind != "captions"
    if rl:
        make = state_episode if kind == "rl_state" else pixel_episode
        rows = [make(rng, int(rng.integers(3, 20)), LAYOUT) for _ in range(12)]
    else:
        rows = [build_caption_row(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8),
                                  rng.integers(3, 30000, int(rng.integers(1, 20))), LAYOUT) for _ in range(12)]
    converter = "rl" if rl else "captions"
    full = write_dir(tmp_path / "full", rows, LAYOUT, converter, "t", rows_per_shard=5, batch_rows=3)
    lean = write_dir(tmp_path / "lean", rows, LAYOUT, converter, "t", rows_per_shard=5, batch_rows=3,
                     schema=shard_schema(rl, vocab_size=LAYOUT.vocab_size, caption=not rl))
    assert sum(p.stat().st_size for p in lean.glob("shard-*")) < sum(p.stat().st_size for p in full.glob("shard-*"))
    for training, workers in ((True, 0), (True, 2), (False, 0)):
        a = _take(build_loader([str(full)], 64, 4, seed=1, training=training, num_workers=workers), 4)
        b = _take(build_loader([str(lean)], 64, 4, seed=1, training=training, num_workers=workers), 4)
        assert len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    shard = lean / "shard-00000.arrow"
    table = open_shard(shard, full=False)  # RL: uint16 ids read as stored, no copy (RowView.ids widens a sample)
    assert table.schema.field("tokens").type == pa.list_(pa.uint16() if rl else pa.int32())
    region = mapped.mapped_region(table, shard)
    assert region is not None and any(lo <= region[0] and region[0] + region[1] <= hi
                                      for lo, hi in mapped.file_mappings(shard))
    monkeypatch.setattr(td, "MAPPED_BUDGET_MB", -1)  # release after every batch
    monkeypatch.setattr(td, "RSS_CHECK_EVERY", 1)
    released = _take(build_loader([str(lean)], 64, 4, seed=1), 4)
    assert all(_same(x, y) for x, y in zip(_take(build_loader([str(full)], 64, 4, seed=1), 4), released, strict=True))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_one_training_epoch_sees_every_token_once(dirs, num_workers):
    """Training: the first epoch's samples (as many as the directory has windows) hold every
    token of a corpus of long and short documents once as a target; none is cut off."""
    loader = build_loader([dirs["tagged"]], seq_len=48, batch_size=4, seed=7, num_workers=num_workers)
    total = loader.stream.units[0].total
    got = Counter()
    batches = _take(loader, -(-total // 4) + 1)
    per_reader = [total // max(1, num_workers) + (r < total % max(1, num_workers)) for r in range(max(1, num_workers))]
    taken = [0] * max(1, num_workers)
    for k, b in enumerate(batches):  # readers take turns; each reader's epoch is its share of the windows
        r = k % max(1, num_workers)
        for i in range(b.tokens.shape[0]):
            if taken[r] < per_reader[r]:
                got.update(b.targets[i][b.loss_mask[i] > 0].tolist())
                taken[r] += 1
    assert taken == per_reader
    assert got == expected_targets(dirs["tagged"])


@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (2, 2), (3, 1)])
def test_training_epochs_cover_each_readers_units_once(dirs, world_size, num_workers):
    """In training each reader's first epoch (up to its epoch counter turning) holds its share."""
    from trainer.stream import Streams
    seen = []
    for rank in range(world_size):
        loader = build_loader([dirs["tagged"]], seq_len=48, batch_size=3, seed=7, num_workers=num_workers,
                              rank=rank, world_size=world_size)
        for reader in range(max(1, num_workers)):
            state = {"samples": 0, "batches": 0, "epoch": [0], "cursor": [0]}
            streams = Streams(loader.stream, reader, state)
            while True:
                r = streams.take(0)
                if state["epoch"][0] > 0:
                    break
                seen.append(r)
    assert sorted(seen) == list(range(loader.stream.units[0].total))


def test_rl_epoch_spreads_windows_over_long_rows(dirs):
    """RL: a row of n tokens gives ceil(n / (L + 1)) windows an epoch, the j-th starting in the
    j-th group of its start boundaries, so an epoch's windows reach every part of a long row."""
    L = 32
    loader = build_loader([dirs["rl"]], seq_len=L, batch_size=2, seed=2, prompt_prob=0.0, training=False)
    units = loader.stream.units[0]
    lens = loader.sources[0].row_lengths()
    assert units.total == int(np.sum(np.ceil(lens / (L + 1))))
    windows: dict[int, list] = {}
    for _, _, parts in loader.trace(units.total):
        (w,) = parts
        windows.setdefault(w.row, []).append((w.start, w.stop))
    assert sorted(windows) == list(range(len(lens)))
    for r, ws in windows.items():
        assert len(ws) == max(1, int(np.ceil(lens[r] / (L + 1))))
        assert max(b for _, b in ws) == lens[r] or len(ws) == 1  # the row's end is reached
        starts = sorted(a for a, _ in ws)
        assert len(set(starts)) == len(starts)  # distinct groups, distinct starts


# --- determinism and resume ----------------------------------------------------------------------------

def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def _same(a: Batch, b: Batch) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_is_exact(dirs, tmp_path, num_workers):
    data = [f"{dirs['pix']}:2", dirs["text"], f"{dirs['cap']}:0.5", dirs["rl"]]
    kw = dict(seq_len=40, batch_size=3, seed=3, num_workers=num_workers, prompt_prob=0.5)
    full = _take(build_loader(data, **kw), 9)
    first = build_loader(data, **kw)
    head = _take(first, 5)  # odd: with 2 workers the next batch is worker 1's
    torch.save(first.state_dict(), tmp_path / "loader.pt")
    resumed = build_loader(data, **kw)
    resumed.load_state_dict(torch.load(tmp_path / "loader.pt", weights_only=True))
    tail = _take(resumed, 4)
    assert all(_same(a, b) for a, b in zip(full, head + tail, strict=True))
    assert resumed.state_dict()["consumed"] == 9
    # and an interrupted iteration of the same loader carries on where it stopped
    cont = _take(first, 4)
    assert all(_same(a, b) for a, b in zip(full[5:], cont, strict=True))
    other = _take(build_loader(data, **dict(kw, seed=4)), 2)
    assert not _same(full[0], other[0])


def test_resume_refuses_a_different_run(dirs):
    a = build_loader([dirs["rl"]], 32, 2, num_workers=0)
    sd = a.state_dict()
    with pytest.raises(ValueError, match="seed"):
        build_loader([dirs["rl"]], 32, 2, seed=1).load_state_dict(sd)
    with pytest.raises(ValueError, match="num_workers"):  # evaluation passes are per worker count
        ev = build_loader([dirs["rl"]], 32, 2, num_workers=0, training=False).state_dict()
        build_loader([dirs["rl"]], 32, 2, num_workers=1, training=False).load_state_dict(ev)


@pytest.mark.parametrize("old,new", [(2, 0), (2, 3), (0, 2)])
def test_resume_with_another_worker_count_reads_every_unit_once(dirs, tmp_path, old, new):
    """Training resumed with another worker count: the units the old readers had not read in
    their epoch are shared out among the new readers first, so the epoch still reads each once."""
    from schemas.split import split_rows
    from trainer.stream import Streams
    kw = dict(seq_len=48, batch_size=3, seed=7)
    first = build_loader([dirs["tagged"]], num_workers=old, **kw)
    _take(first, 5)
    torch.save(first.state_dict(), tmp_path / "loader.pt")
    sd = torch.load(tmp_path / "loader.pt", weights_only=True)
    units = first.stream.units[0]
    before = []
    for r, st in enumerate(sd["readers"]):
        assert st["epoch"] == [0]
        before += split_rows("rows", units.per_shard, 0, 1, r, old, 0, first.stream.dir_seed(0))[:st["cursor"][0]].tolist()
    resumed = build_loader([dirs["tagged"]], num_workers=new, **kw)
    resumed.load_state_dict(sd)
    after = []
    for r in range(max(1, new)):
        streams = Streams(resumed.stream, r, {k: list(v) if isinstance(v, list) else v
                                               for k, v in resumed._states[r].items()})
        while streams.state["carry"][0] >= 0:
            after.append(streams.take(0))
        assert streams.state["epoch"] == [1]  # then the reader's own next epoch
    assert len(before) == 15 and sorted(before + after) == list(range(units.total))
    batches = _take(resumed, 4)  # and it trains on
    assert len(batches) == 4 and all(b.tokens.shape == (3, 48) for b in batches)
    again = resumed.state_dict()  # mid-carry the transition is saved with the readers
    assert again["num_workers"] == new and again["transition"][0] is not None


# --- what samples are made of ---------------------------------------------------------------------------

def _expected(path: str, part) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """tokens, loss mask, local positions and patches of a part, from an independent read."""
    row = _row(path, part.row)
    p0 = int(np.count_nonzero(row.tokens[:part.start] == PATCH_SLOT))
    p1 = p0 + int(np.count_nonzero(row.tokens[part.start:part.stop] == PATCH_SLOT))
    mask = row.loss_mask[part.start:part.stop] * (1 if part.loss else 0)
    return row.tokens[part.start:part.stop], mask, row.local_pos[part.start:part.stop], row.patches[p0:p1]


@pytest.mark.parametrize("which", ["pix", "text", "cap"])
def test_samples_are_row_slices_with_their_patches(dirs, which):
    loader = build_loader([dirs[which]], seq_len=40, batch_size=2, seed=1, prompt_prob=0.5)
    for sample, _, parts in loader.trace(60):
        exp = [_expected(dirs[which], p) for p in parts]
        assert np.array_equal(sample.tokens, np.concatenate([e[0] for e in exp]))
        assert np.array_equal(sample.loss_mask, np.concatenate([e[1] for e in exp]))
        assert np.array_equal(sample.local_pos, np.concatenate([e[2] for e in exp]))
        assert np.array_equal(np.asarray(sample.patches), np.concatenate([e[3] for e in exp]))
        assert len(sample.tokens) <= 41 and np.count_nonzero(sample.tokens == PATCH_SLOT) == len(sample.patches)
        assert loader.tasks[sample.task_id] == _task_of(dirs[which], parts[-1].row)
        if which == "cap":
            assert len(parts) <= 5
        if which == "text" and len(parts) > 1:  # packed documents: end-of-text closes each but the last
            assert all(sample.tokens[sum(p.stop - p.start for p in parts[:i + 1]) - 1] == LAYOUT.eos_id
                       for i in range(len(parts) - 1))
            assert len(sample.tokens) == 41 or parts[-1].stop == len(_row(dirs[which], parts[-1].row).tokens)


def _task_of(path, r):
    from schemas.manifest import Manifest
    m = Manifest.read(path)
    shard, i = locate_rows([s.rows for s in m.shards], np.array([r]))
    return open_shard(f"{path}/{m.shards[int(shard[0])].name}").column("task")[int(i[0])].as_py()


def test_rl_windows_start_on_timestep_boundaries(dirs):
    loader = build_loader([dirs["rl"]], seq_len=64, batch_size=2, seed=2, prompt_prob=0.0)
    late = ends = 0
    for _, _, parts in loader.trace(300):
        (w,) = parts
        row = _row(dirs["rl"], w.row)
        n, ss = len(row.tokens), row.step_starts
        assert w.start in set(ss.tolist())
        assert w.stop - w.start == min(65, n - w.start)
        last = ss[min(np.searchsorted(ss, n - 65), len(ss) - 1)] if n > 65 else 0
        assert w.start <= last  # candidates: boundaries up to the first one that reaches the end
        late += w.start > 0
        ends += w.start > 0 and w.stop == n
    assert late > 50 and ends > 3  # long episodes get later windows, and their ends are reachable


def test_prompts_same_task_right_part_right_rate(dirs):
    P = 16
    loader = build_loader([dirs["rl"]], seq_len=64, batch_size=2, seed=5, prompt_len=P)
    src = loader.sources[0]
    kinds = Counter()
    n = 3000
    for sample, _, parts in loader.trace(n):
        if len(parts) == 1:
            kinds["none"] += 1
            continue
        prompt, window = parts
        kinds[prompt.role] += 1
        prow, wrow = _row(dirs["rl"], prompt.row), _row(dirs["rl"], window.row)
        assert prompt.row != window.row and src.row_task(prompt.row) == src.row_task(window.row)
        assert 0 < prompt.stop - prompt.start <= P and not prompt.loss
        assert not sample.loss_mask[:prompt.stop - prompt.start].any()
        assert prompt.start in set(prow.step_starts.tolist())
        if prompt.role == "prompt-goal":  # the episode's end
            assert prompt.stop == len(prow.tokens)
        else:
            assert prompt.role == "prompt-window"
        assert window.start in set(wrow.step_starts.tolist())
        assert len(sample.tokens) <= 65
    rate = (n - kinds["none"]) / n
    assert abs(rate - 0.25) < 0.035, kinds
    goal = kinds["prompt-goal"] / (n - kinds["none"])
    assert abs(goal - 0.5) < 0.07, kinds
    ends = sum(p[0].stop == len(_row(dirs["rl"], p[0].row).tokens)
               for _, _, p in loader.trace(400) if len(p) == 2 and p[0].role == "prompt-window")
    assert ends < 0.8 * 400 * 0.125  # uniform windows are mostly not the end


def test_mixture_weights_count_tokens(dirs):
    """Short episodes (about 60 tokens) against full 129-token text sequences: with equal weights
    each directory gives about half the tokens, so short episodes are drawn about twice as often."""
    for w, share in ((1, 0.5), (3, 0.75)):
        loader = build_loader([f"{dirs['short']}:{w}", dirs["text"]], seq_len=128, batch_size=4, seed=9,
                              prompt_prob=0.0)
        tok, cnt = Counter(), Counter()
        for sample, d, _ in loader.trace(1500):
            tok[d] += len(sample.tokens)
            cnt[d] += 1
        assert abs(tok[0] / (tok[0] + tok[1]) - share) < 0.05, (w, tok)
        assert cnt[0] > 1.3 * cnt[1] * w


# --- batches: masks, positions and patches line up with the tokens ---------------------------------------

@pytest.mark.parametrize("training", [True, False])
def test_batches_line_up_with_samples(dirs, training):
    L, B = 40, 6
    loader = build_loader([dirs["pix"], dirs["cap"]], seq_len=L, batch_size=B, seed=8, training=training,
                          prompt_prob=0.5)
    batch = next(iter(loader))
    samples = [s for s, _, _ in loader.trace(B)]
    assert batch.tokens.shape == (B, L) and batch.tokens.dtype == torch.int64
    k = 0
    for b, s in enumerate(samples):
        n = len(s.tokens)
        toks = np.where(s.tokens == PATCH_SLOT, 0, s.tokens)
        assert np.array_equal(batch.tokens[b, :n - 1].numpy(), toks[:-1])
        assert np.array_equal(batch.targets[b, :n - 1].numpy(), toks[1:])
        assert batch.attention_mask[b].sum() == n - 1 and not batch.attention_mask[b, n - 1:].any()
        mask = s.loss_mask[1:].astype(np.float32) * (s.tokens[1:] != PATCH_SLOT)
        assert np.array_equal(batch.loss_mask[b, :n - 1].numpy(), mask) and not batch.loss_mask[b, n - 1:].any()
        assert np.array_equal(batch.local_pos[b, :n - 1].numpy(), s.local_pos[:-1])
        assert (batch.local_pos[b, n - 1:] == -1).all()
        slots = np.flatnonzero(s.tokens[:L] == PATCH_SLOT)
        m = len(slots)
        assert np.array_equal(batch.patch_index[k:k + m].numpy(), b * L + slots)
        assert np.allclose(batch.patches[k:k + m].numpy(), normalize_patches(np.asarray(s.patches)[:m]))
        pos = np.asarray(s.patch_pos)[:m].astype(np.int64)
        rows, cols = batch.patch_row[k:k + m].numpy(), batch.patch_col[k:k + m].numpy()
        if training:
            assert ((rows >= pos[:, 0]) & (rows < pos[:, 1]) & (cols >= pos[:, 2]) & (cols < pos[:, 3])).all()
        else:
            assert np.array_equal(rows, eval_positions(pos[:, 0], pos[:, 1]))
            assert np.array_equal(cols, eval_positions(pos[:, 2], pos[:, 3]))
        k += m
    assert k == len(batch.patches) > 0
    assert batch.patches.abs().max() <= 0.25 + 1e-6


def test_infinite_in_training_one_pass_in_eval(dirs):
    loader = build_loader([dirs["cap"]], seq_len=64, batch_size=4, training=False)
    passes = [list(loader), list(loader)]  # every evaluation pass is the same pass
    n_eval = len(passes[0])
    assert 0 < n_eval <= 30 / 4 + 1 and len(passes[1]) == n_eval
    assert all(_same(a, b) for a, b in zip(*passes, strict=True))
    mixed = next(iter(build_loader([dirs["cap"], dirs["text"], dirs["rl"]], 64, 6, training=False)))
    ids = set(mixed.task_id.tolist())
    assert {0, 1} <= ids and max(ids) >= 2  # captions, text and an RL task: every directory early in the pass
    train = build_loader([dirs["cap"]], seq_len=64, batch_size=4)
    assert len(_take(train, 3 * n_eval)) == 3 * n_eval
    assert max(train.state_dict()["readers"][0]["epoch"]) >= 1


# --- refusals -------------------------------------------------------------------------------------------

def test_layout_mismatch_is_refused(dirs, tmp_path):
    other = VocabLayout(text_vocab_size=32000, eos_id=2, profile="disjoint")
    odd = str(make_text_dir(tmp_path / "disjoint", other, docs=5))
    with pytest.raises(LayoutError,
                       match=r"shard directory .*disjoint.* differs from the shard directory .*text.*profile"):
        build_loader([dirs["text"], odd], 32, 2)
    with pytest.raises(LayoutError, match="differs from the model's .*profile 'gato' vs 'disjoint'"):
        build_loader([dirs["text"]], 32, 2, layout=other)
    ok = build_loader([dirs["text"]], 32, 2, layout=LAYOUT)
    assert ok.layout == LAYOUT and ok.tasks == ["text"]


def test_bad_inputs_are_one_line_errors(dirs, tmp_path):
    assert parse_data_arg("a/b:2.5") == ("a/b", 2.5) and parse_data_arg("a/b") == ("a/b", 1.0)
    assert parse_data_arg("c:/x:y") == ("c:/x:y", 1.0)
    with pytest.raises(DataError, match="weight"):
        build_loader([f"{dirs['text']}:-1"], 32, 2)
    with pytest.raises(ManifestError, match="no manifest"):
        build_loader([str(tmp_path)], 32, 2)
    with pytest.raises(DataError, match="not a directory"):
        build_loader([str(tmp_path / "nope")], 32, 2)
    broken = tmp_path / "broken"
    make_text_dir(broken, LAYOUT, docs=30)
    (broken / "shard-00001.arrow").unlink()
    with pytest.raises(DataError, match="shard-00001.arrow: shard listed in manifest.json is missing"):
        build_loader([str(broken)], 32, 2)


def test_rows_are_memory_mapped_views(dirs):
    src = build_loader([dirs["text"]], 32, 2).sources[0]
    view = src.row(3)
    assert not view.tokens.flags.owndata and not view.tokens.flags.writeable  # a view of the mapped file


def test_rank_comes_from_torch_distributed_when_left_default(dirs, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    loader = build_loader([dirs["text"]], 32, 2)
    assert (loader.stream.rank, loader.stream.world_size) == (1, 3)
    explicit = build_loader([dirs["text"]], 32, 2, rank=0, world_size=2)
    assert (explicit.stream.rank, explicit.stream.world_size) == (0, 2)


def test_released_pages_read_back_the_same(dirs, monkeypatch):
    """Unmapping read pages (to keep RSS flat) must never change what is read next."""
    import trainer.stream as td
    import trainer.mapped as mapped
    data = [dirs["pix"], dirs["cap"]]
    kept = _take(build_loader(data, 40, 4, seed=2), 4)
    monkeypatch.setattr(td, "MAPPED_BUDGET_MB", -1)  # release after every batch
    monkeypatch.setattr(td, "RSS_CHECK_EVERY", 1)
    calls = []
    real = td.ShardSource.release_pages
    monkeypatch.setattr(td.ShardSource, "release_pages", lambda self: (calls.append(1), real(self)))
    released = _take(build_loader(data, 40, 4, seed=2), 4)
    assert len(calls) >= 2 * 3 and all(_same(a, b) for a, b in zip(kept, released, strict=True))
    # only spans inside a mapping of the shard file are ever released, never heap memory
    from pathlib import Path
    import pyarrow as pa
    shard = Path(dirs["cap"]) / "shard-00000.arrow"
    assert mapped.mapped_region(open_shard(shard), shard) is not None
    assert mapped.mapped_region(pa.table({"x": list(range(5000))}), shard) is None


def test_a_reader_looks_at_its_mapped_pages_as_often_as_they_grow(tmp_path, monkeypatch):
    """Random RL rows over gigabytes of shards map ~70 MB a batch: a look every RSS_CHECK_EVERY
    batches let file-backed RSS pass the budget by 4x before the first release. The first look
    comes after the first batch and learns the rate; a budget a batch's growth would pass is then
    looked at, and released, every batch. (37 MB of pixel episodes: a batch maps 4-12 MB.)"""
    import trainer.stream as td
    data = make_rl_dir(tmp_path / "pix", VocabLayout(text_vocab_size=1000, eos_id=2), episodes=200, steps=(60, 60),
                       pixels=True, rows_per_shard=50)
    looks, releases = [], []
    real_look, real_release = td.mapped_mb, td.ShardSource.release_pages
    monkeypatch.setattr(td, "mapped_mb", lambda: (looks.append(1), real_look())[1])
    monkeypatch.setattr(td.ShardSource, "release_pages", lambda self: (releases.append(1), real_release(self)))
    monkeypatch.setattr(td, "MAPPED_BUDGET_MB", 4)
    it = iter(build_loader([str(data)], 40, 4, seed=2))
    next(it)
    assert releases, "no release after the first batch"
    for _ in range(4):
        before = len(looks)
        next(it)
        assert len(looks) > before, "a batch went by without a look"


def test_reads_what_the_real_converter_writes(tmp_path, sp_model_path, corpus_path, rl_shard_dir):
    """`gato-tokenize text` output (several shards) plus the shared RL fixture: one eval pass reads
    every row once, layouts and tasks come from the manifests."""
    from converters.cli import main
    from schemas.manifest import Manifest
    from tokenizer_kit.text import TextTokenizer

    lines = open(corpus_path, encoding="utf-8").read().splitlines()
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(40):  # one document per file
        (docs / f"doc{i:02d}.txt").write_text("\n".join(lines[i * 7:i * 7 + 1 + i % 7]), encoding="utf-8")
    out = tmp_path / "text_shards"
    assert main(["text", str(docs), "--out", str(out), "--text-tokenizer", sp_model_path, "--shard-size", "2KB",
                 "--task", "corpus", "--no-progress"]) == 0
    m = Manifest.read(out)
    assert len(m.shards) > 1
    loader = build_loader([str(out), str(rl_shard_dir)], 64, 8, training=False, num_workers=1)
    assert loader.layout == TextTokenizer(sp_model_path).layout()
    assert loader.tasks == ["corpus", "pong-like"]
    batches = list(loader)
    cursors = loader.state_dict()["readers"][0]["cursor"]
    assert cursors == [u.total for u in loader.stream.units]  # one pass: every unit of both directories
    assert loader.stream.units[0].tokens == m.total_tokens + sum(loader.stream.units[0].per_shard) - len(m.shards)
    tokens = torch.cat([b.tokens[b.task_id == 0] for b in batches])
    assert tokens.max() < loader.layout.text_vocab_size and (tokens == loader.layout.eos_id).sum() > 0
    assert sum(len(b.patches) for b in batches) > 0  # the RL frames' patches came along
