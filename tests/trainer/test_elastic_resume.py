"""A run resumed on another number of ranks: the epoch its readers left half-read is finished by
the new readers without a row read twice or skipped (schemas.split.resume_rows), then the new
world's own split goes on. Rows are counted where the loader takes them."""

from __future__ import annotations

import numpy as np
import pytest

import trainer.data as data_module
from tests.support.loader_data import make_rl_dir
from tokenizer_kit.layout import VocabLayout
from trainer.data import build_loader


@pytest.fixture
def taken(monkeypatch):
    """[(rank, epoch, unit)] of every unit (a row's window) a loader in this process takes, one at a
    time, whether it is taken alone or with a batch's others."""
    seen = []
    take, take_many = data_module.Streams.take, data_module.Streams.take_many

    def spy(self, d):
        unit = take(self, d)
        if unit is not None:
            seen.append((self.ds.rank, self.state["epoch"][d], unit))
        return unit

    def spy_many(self, d, n):
        units = []
        for _ in range(n):  # each unit with the epoch it was taken in (a batch may span two)
            units.append(take_many(self, d, 1))
            seen.append((self.ds.rank, self.state["epoch"][d], int(units[-1][0])))
        return np.concatenate(units) if units else np.zeros(0, np.int64)

    monkeypatch.setattr(data_module.Streams, "take", spy)
    monkeypatch.setattr(data_module.Streams, "take_many", spy_many)
    return seen


@pytest.mark.parametrize("old_world,new_world", [(2, 3), (3, 2)])
def test_resuming_on_another_number_of_ranks_reads_every_row_of_the_epoch_once(tmp_path, taken, old_world,
                                                                               new_world):
    layout = VocabLayout(text_vocab_size=32000, eos_id=2)
    d = str(make_rl_dir(tmp_path / "rl", layout, episodes=50, rows_per_shard=8))

    def loader(rank, world):
        return build_loader([d], 64, 2, seed=7, rank=rank, world_size=world, layout=layout)

    units = loader(0, old_world).stream.units[0].total  # an epoch's units (windows of its 50 rows)
    states = []
    for rank in range(old_world):  # uneven progress: rank r made 3 + 2r batches
        ld = loader(rank, old_world)
        it = iter(ld)
        for _ in range(3 + 2 * rank):
            next(it)
        states.append(ld.state_dict())
    before = [row for _, epoch, row in taken if epoch == 0]
    assert len(before) == len(set(before)) and 0 < len(before) < units
    taken.clear()
    for rank in range(new_world):
        ld = loader(rank, new_world)
        ld.load_elastic(states)
        it = iter(ld)
        while ld._states[0]["epoch"][0] == 0:  # until this rank has finished the old run's epoch
            next(it)
    after = [row for _, epoch, row in taken if epoch == 0]
    assert sorted(before + after) == list(range(units))  # each unit of the epoch once, none skipped
    per_rank = [sum(1 for r, e, _ in taken if e == 0 and r == k) for k in range(new_world)]
    assert max(per_rank) - min(per_rank) <= 1 + 2  # shared out evenly (a batch of 2 may overshoot)
    assert {e for _, e, _ in taken} <= {0, 1}  # then the new world's epoch 1


def test_loader_states_that_are_not_a_whole_run_are_refused(tmp_path):
    layout = VocabLayout(text_vocab_size=32000, eos_id=2)
    d = str(make_rl_dir(tmp_path / "rl", layout, episodes=10))
    old = [build_loader([d], 64, 2, seed=7, rank=r, world_size=2, layout=layout).state_dict() for r in range(2)]
    ld = build_loader([d], 64, 2, seed=7, rank=0, world_size=3, layout=layout)
    with pytest.raises(ValueError, match="whole run"):
        ld.load_elastic(old[:1] + old[:1])
    with pytest.raises(ValueError, match="seed"):
        build_loader([d], 64, 2, seed=8, rank=0, world_size=3, layout=layout).load_elastic(old)


@pytest.mark.slow
def test_a_run_of_two_torchrun_ranks_resumes_on_one(tmp_path):
    """gato-train on 2 ranks (torchrun, gloo) to step 4, then the same command on 1 process to step 8:
    it continues from the checkpoint (the loader shares out what the two ranks had not read)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from trainer.cli import main
    layout = VocabLayout(text_vocab_size=32000, eos_id=2)
    d = str(make_rl_dir(tmp_path / "rl", layout, episodes=40, rows_per_shard=8))
    run = tmp_path / "run"
    args = ["--data", d, "--out", str(run), "--preset", "tiny", "--batch-size", "2", "--seq-len", "32",
            "--no-progress", "--save-every", "4", "--log-every", "2"]
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "trainer.cli", *args, "--steps", "4"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert main([*args, "--steps", "8"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [2, 4, 6, 8], steps  # steps 6 and 8 made by the one process, after the two ranks' 4


def test_a_second_change_of_ranks_inside_the_same_epoch_is_refused(tmp_path):
    layout = VocabLayout(text_vocab_size=32000, eos_id=2)
    d = str(make_rl_dir(tmp_path / "rl", layout, episodes=30))
    first = []
    for rank in range(2):
        ld = build_loader([d], 64, 2, seed=7, rank=rank, world_size=2, layout=layout)
        next(iter(ld))
        first.append(ld.state_dict())
    second = []
    for rank in range(3):
        ld = build_loader([d], 64, 2, seed=7, rank=rank, world_size=3, layout=layout)
        ld.load_elastic(first)
        next(iter(ld))
        second.append(ld.state_dict())
    again = build_loader([d], 64, 2, seed=7, rank=0, world_size=3, layout=layout)
    again.load_state_dict(second[0])  # the same number of ranks: fine, mid-resume
    with pytest.raises(ValueError, match="has not finished the epoch"):
        build_loader([d], 64, 2, seed=7, rank=0, world_size=2, layout=layout).load_elastic(second)
