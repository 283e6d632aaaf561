"""gato-train on small real shard directories: learning, exact resume, SIGTERM, exit codes, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.shards import cartpole_episodes
from schemas.manifest import Manifest, ShardInfo
from schemas.shard import SHARD_PATTERN, rows_to_batch, shard_schema, write_shard
from tokenizer_kit.files import file_sha256
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.text_rows import build_caption_row, build_text_row
from trainer import train as train_mod
from trainer.checkpoint import CHECKPOINT_NAME, load_model, read_checkpoint
from trainer.cli import main
from trainer.train import TrainArgs, lr_at

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]


def write_shard_dir(path: Path, rows, task: str, converter: str, layout: VocabLayout, returns=None) -> Path:
    """A one-shard directory through the schema's own writer, manifest last (SPEC 7)."""
    path.mkdir(parents=True)
    batch = rows_to_batch(rows, [f"{task}-{i}" for i in range(len(rows))], task,
                          episode_returns=returns)
    name = SHARD_PATTERN.format(0)
    size = write_shard(path / name, [batch], shard_schema(returns is not None))
    Manifest(layout=layout.to_dict(), converter=converter, tasks=[task],
             shards=[ShardInfo(name, len(rows), int(sum(len(r) for r in rows)), size, file_sha256(path / name))]
             ).write(path)
    return path


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory, text_tokenizer, corpus_path):
    """Three real directories: CartPole episodes, digit image-caption pairs, pseudo-English text."""
    from sklearn.datasets import load_digits

    layout = text_tokenizer.layout()
    root = tmp_path_factory.mktemp("shards")
    rl_rows, rets = cartpole_episodes(layout, 24, random_share=0.2)  # noisy: states off the rule's path too
    rl = write_shard_dir(root / "cartpole", rl_rows, "cartpole", "rl", layout, rets)
    digits = load_digits()
    names = "zero one two three four five six seven eight nine".split()
    caps = [build_caption_row((digits.images[i] * 15).astype(np.uint8),
                              text_tokenizer.encode(f"the image shows digit {names[digits.target[i]]}"),
                              layout, size=(32, 32)) for i in range(120)]
    cap = write_shard_dir(root / "digits", caps, "digits", "captions", layout)
    lines = Path(corpus_path).read_text().splitlines()
    docs = [build_text_row(text_tokenizer.encode(" ".join(lines[i:i + 8])), layout) for i in range(0, 800, 8)]
    txt = write_shard_dir(root / "text", docs, "text", "text", layout)
    return {"rl": str(rl), "captions": str(cap), "text": str(txt), "layout": layout}


def _args(data_dirs, out, *extra):
    return (["--data", data_dirs["rl"], data_dirs["captions"] + ":2", data_dirs["text"], "--out", str(out),
             "--preset", "tiny", "--batch-size", "4", "--seq-len", "64", "--no-progress"] + list(extra))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_decreases_and_logs(data_dirs, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(data_dirs, run, "--steps", "40", "--log-every", "5", "--eval-every", "20",
                      "--eval-steps", "2", "--warmup", "4")) == 0
    out = capsys.readouterr().out  # the summary says what an epoch of each directory delivers
    from schemas.manifest import Manifest
    m = Manifest.read(data_dirs["text"])
    assert f"epoch of {data_dirs['text']}: " in out
    assert f"{m.total_tokens - len(m.shards):,} of {m.total_tokens:,} tokens as targets" in out, out
    assert f"epoch of {data_dirs['rl']}: " in out and "overlaps counted" in out
    recs = _metrics(run)
    assert [r["step"] for r in recs] == list(range(5, 41, 5))
    assert np.mean([r["loss"] for r in recs[-2:]]) < recs[0]["loss"] - 1.0
    last = recs[-1]
    for key in ("lr", "grad_norm", "tokens_per_s", "loss/cartpole", "loss/digits", "loss/text", "eval_loss",
                "eval_loss/cartpole", "eval_loss/digits", "eval_loss/text"):
        assert key in last, key
    assert last["tokens_per_s"] > 0
    assert [r["step"] for r in recs if "eval_loss" in r] == [20, 40]
    assert (run / "loss.png").stat().st_size > 1000
    assert (run / CHECKPOINT_NAME).is_file()
    assert not [p for p in run.iterdir() if ".tmp" in p.name]
    # The checkpoint reloads without unpickling objects and rebuilds the model.
    state = read_checkpoint(run)
    assert state["step"] == 40
    model, layout, config = load_model(run)
    assert layout == data_dirs["layout"] and config.preset == "tiny" and config.seq_len == 64 and not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["model"][k])


def test_exact_resume_after_sigterm(data_dirs, tmp_path, monkeypatch):
    """A run stopped by SIGTERM at step 7 and resumed logs the same losses, number for number."""
    common = ["--steps", "10", "--log-every", "1", "--save-every", "4", "--grad-accum", "2", "--warmup", "3"]
    straight, stopped = tmp_path / "a", tmp_path / "b"
    assert main(_args(data_dirs, straight, *common)) == 0
    original = train_mod.Trainer.train_step

    def step_then_sigterm(self):
        if self.step == 6:  # the signal arrives during step 7: the run stops after it
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    monkeypatch.setattr(train_mod.Trainer, "train_step", step_then_sigterm)
    assert main(_args(data_dirs, stopped, *common)) == 0
    assert read_checkpoint(stopped)["step"] == 7 and _metrics(stopped)[-1]["step"] == 7
    assert not (stopped / "loss.png").exists()
    monkeypatch.setattr(train_mod.Trainer, "train_step", original)
    assert main(_args(data_dirs, stopped, *common[2:])) == 0  # --steps comes from the run
    a, b = _metrics(straight), _metrics(stopped)
    assert [r["step"] for r in b] == list(range(1, 11))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]
    sa, sb = read_checkpoint(straight), read_checkpoint(stopped)
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k


def test_resume_refuses_changed_run_arguments(data_dirs, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(data_dirs, run, "--steps", "2")) == 0
    capsys.readouterr()
    assert main(_args(data_dirs, run, "--steps", "3", "--batch-size", "2")) == 2
    assert "batch-size" in capsys.readouterr().err
    assert main(_args(data_dirs, run, "--steps", "3")) == 0  # same run, more steps: continues
    assert [r["step"] for r in _metrics(run)] == [2, 3]


def test_resume_with_another_worker_count(data_dirs, tmp_path):
    """The loader shares out what the old workers left unread; the run goes on with the new count."""
    run = tmp_path / "run"
    assert main(_args(data_dirs, run, "--steps", "3", "--num-workers", "2", "--save-every", "3")) == 0
    assert main(_args(data_dirs, run, "--steps", "5", "--num-workers", "0")) == 0
    assert [r["step"] for r in _metrics(run)] == [3, 5]  # logged at the end of each part
    ckpt = read_checkpoint(run)
    assert ckpt["step"] == 5 and ckpt["loader"][0]["num_workers"] == 0 and ckpt["loader"][0]["consumed"] == 5


def test_bad_data_exits_1_with_one_line(data_dirs, tmp_path, capsys, text_tokenizer):
    assert main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--steps", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing" in err and "Traceback" not in err
    other = VocabLayout(text_vocab_size=text_tokenizer.vocab_size, profile="disjoint", eos_id=text_tokenizer.eos_id)
    odd = write_shard_dir(tmp_path / "odd", [build_text_row(np.arange(3, 40), other)], "odd", "text", other)
    assert main(["--data", data_dirs["text"], str(odd), "--out", str(tmp_path / "r2"), "--steps", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "layout" in err
    (tmp_path / "r3").mkdir()
    (tmp_path / "r3" / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    assert main(["--data", data_dirs["text"], "--out", str(tmp_path / "r3"), "--steps", "1"]) == 1
    assert "not a checkpoint" in capsys.readouterr().err


def test_bad_usage_exits_2(data_dirs, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "r")])  # no --data
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--data", data_dirs["text"], "--out", str(tmp_path / "r"), "--preset", "huge"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:  # the shared argument types reject it while parsing
        main(["--data", data_dirs["text"], "--out", str(tmp_path / "r"), "--steps", "0"])
    assert e.value.code == 2


def test_lr_schedule_warmup_then_cosine_to_a_tenth():
    args = TrainArgs(data=[], out="", lr=1e-3, warmup=10, steps=110).resolve()
    lrs = [lr_at(s, args) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))
    assert lr_at(110, args) == pytest.approx(1e-4)


_DDP_SCRIPT = textwrap.dedent("""
    import hashlib, os, sys, json
    import torch
    import trainer.data as data
    from trainer import train
    rank, out = int(os.environ["RANK"]), sys.argv[1]
    build = data.build_loader
    seen = []
    class Spy:
        def __init__(self, loader):
            self.loader = loader
        def __getattr__(self, name):
            return getattr(self.loader, name)
        def __iter__(self):
            for b in self.loader:
                seen.append(hashlib.sha1(b.tokens.numpy().tobytes()).hexdigest())
                yield b
    def spy_build(*a, **k):
        loader = build(*a, **k)
        return Spy(loader) if k.get("training", True) else loader
    data.build_loader = train.build_loader = spy_build  # train.py holds its own reference
    run = train.Trainer.run
    def run_and_report(self):
        code = run(self)
        digest = float(sum(p.double().sum() for p in self.model.parameters()))
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"batches": seen, "params": digest, "world": self.d.world}, f)
        return code
    train.Trainer.run = run_and_report
    from trainer.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(data_dirs, tmp_path):
    """DDP with gloo (15-30 s here): both ranks finish, read different batches, end with equal weights."""
    script = tmp_path / "spy.py"
    script.write_text(_DDP_SCRIPT)
    run = tmp_path / "run"
    run.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           str(script), str(run)] + _args(data_dirs, run, "--steps", "4", "--log-every", "2", "--eval-steps", "1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert len(r0["batches"]) == len(r1["batches"]) == 4
    assert not set(r0["batches"]) & set(r1["batches"])
    assert r0["params"] == r1["params"]
    assert [r["step"] for r in _metrics(run)] == [2, 4]
    assert read_checkpoint(run)["world_size"] == 2


def test_sigterm_from_outside_saves_and_exits_0(data_dirs, tmp_path):
    """A real SIGTERM to a running gato-train: checkpoint of the last finished step, exit 0."""
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "trainer.cli"] + _args(data_dirs, run, "--steps", "100000",
                                                                           "--log-every", "1"),
                            env=env, cwd=str(REPO), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "metrics.jsonl").is_file() and len(_metrics(run)) >= 2:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "stopped by SIGTERM" in err
    step = read_checkpoint(run)["step"]
    assert 2 <= step < 100000 and _metrics(run)[-1]["step"] == step
    assert not [p for p in run.iterdir() if ".tmp" in p.name]


def test_eval_data_is_evaluated_per_task(data_dirs, tmp_path):
    run = tmp_path / "run"
    assert main(_args(data_dirs, run, "--steps", "2", "--eval-steps", "1", "--eval-data", data_dirs["text"])) == 0
    last = _metrics(run)[-1]
    assert last["eval_loss/text"] == last["eval_loss"] and "eval_loss/cartpole" not in last


def test_a_batch_without_targets_has_no_loss_and_changes_nothing(data_dirs, tmp_path):
    args = TrainArgs(data=[data_dirs["rl"]], out=str(tmp_path / "run"), batch_size=2, seq_len=64, steps=2,
                     warmup=1, progress=False)
    trainer = train_mod.Trainer(args)
    batch = next(iter(trainer.loader))
    batch.loss_mask.zero_()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer._it = iter([batch])
    rec = trainer.train_step()
    assert rec["loss"] is None and rec["target_tokens"] == 0  # not 0.0: there was nothing to average
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    trainer._it = iter(trainer.loader)
    rec = trainer.train_step()
    assert rec["loss"] > 0 and rec["target_tokens"] > 0


def test_metrics_count_target_tokens_per_step_and_task(data_dirs, tmp_path):
    run = tmp_path / "run"
    assert main(_args(data_dirs, run, "--steps", "4", "--log-every", "2", "--warmup", "1")) == 0
    for r in _metrics(run):
        assert r["target_tokens"] > 0
        assert {"target_tokens/cartpole", "target_tokens/digits", "target_tokens/text"} <= set(r)


def test_a_caption_pair_longer_than_seq_len_is_refused(data_dirs, tmp_path, capsys):
    assert main(["--data", data_dirs["captions"], "--out", str(tmp_path / "run"), "--seq-len", "8",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert data_dirs["captions"] in err and "image-caption pair" in err and "--seq-len 8" in err
