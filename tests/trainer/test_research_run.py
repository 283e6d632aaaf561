"""A research run: TensorBoard and W&B logs, a YAML run config, the typed run record, step copies,
keep-last and keep-best across a resume, and the summary's one window."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer import train as train_mod
from trainer.checkpoint import BEST_NAME, CHECKPOINT_NAME, read_checkpoint, step_copies
from trainer.cli import build_parser, main
from trainer.run_config import FIELDS, RunRecord, TrainArgs

from test_train import _args, _metrics, data_dirs  # noqa: F401 (the module's shard directories)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tensorboard_events_read_back_with_tensorboards_own_reader(data_dirs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(_args(data_dirs, run, "--steps", "6", "--log-every", "2", "--eval-every", "3", "--eval-steps", "1",
                      "--log", "jsonl,tensorboard")) == 0
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("loss", "loss/cartpole", "loss/digits", "loss/text", "lr", "tokens_per_s", "elapsed_s", "time",
                "eval_loss", "eval_loss/digits"):
        assert tag in tags, tag
    recs = _metrics(run)
    assert [e.step for e in acc.Scalars("loss")] == [r["step"] for r in recs]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([r["loss"] for r in recs], rel=1e-6)
    assert [e.step for e in acc.Scalars("eval_loss")] == [3, 6]
    # wall clock: metrics.jsonl has it, and TensorBoard's own wall time is the record's
    assert all(r["time"] > 1.6e9 for r in recs) and recs[-1]["elapsed_s"] >= recs[0]["elapsed_s"] > 0
    assert acc.Scalars("loss")[-1].wall_time == pytest.approx(recs[-1]["time"], abs=1e-3)


def test_tensorboard_after_a_resume_holds_each_step_once(data_dirs, tmp_path, monkeypatch):
    run = tmp_path / "run"
    common = ["--steps", "6", "--log-every", "1", "--save-every", "2", "--log", "tensorboard"]
    original = train_mod.Trainer.train_step

    def crash_at_5(self):
        if self.step == 5:
            raise KeyboardInterrupt  # killed after logging steps 1-5; the checkpoint is step 4
        return original(self)

    monkeypatch.setattr(train_mod.Trainer, "train_step", crash_at_5)
    assert main(_args(data_dirs, run, *common)) == 130
    monkeypatch.setattr(train_mod.Trainer, "train_step", original)
    assert main(_args(data_dirs, run, *common)) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([r["loss"] for r in _metrics(run)], rel=1e-6)


def test_wandb_offline_run_resumes_the_same_run_id(data_dirs, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert main(_args(data_dirs, run, "--steps", "2", "--log-every", "1", "--log", "jsonl,wandb")) == 0
    rid = RunRecord.read(run).wandb_id
    assert rid
    first = sorted((run / "wandb").glob("offline-run-*"))
    assert len(first) == 1 and first[0].name.endswith(rid)
    assert (first[0] / f"run-{rid}.wandb").stat().st_size > 0
    assert main(_args(data_dirs, run, "--steps", "4", "--log-every", "1", "--log", "jsonl,wandb")) == 0
    assert RunRecord.read(run).wandb_id == rid
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(p.name.endswith(rid) for p in runs)
    # the offline run files hold the logged history, steps 1-2 then 3-4 of the same run id
    history = [(r.history.step.num, {"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                                     for i in r.history.item})
               for p in runs for r in wandb_records(p / f"run-{rid}.wandb") if r.WhichOneof("record_type") == "history"]
    assert [step for step, _ in history] == [1, 2, 3, 4]
    history = [h for _, h in history]
    assert [h["loss"] for h in history] == pytest.approx([r["loss"] for r in _metrics(run)], rel=1e-6)


def wandb_records(path: Path):
    """The records of a W&B offline run file, parsed with wandb's own protobuf classes. The file is
    a 7-byte header (':W&B', magic, version), then LevelDB-log records in 32 KiB blocks (crc32,
    length, type: 1 full, 2 first, 3 middle, 4 last); wandb ships no Python reader of it any more."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if length == 0 and kind == 0:
            pos += left  # the block's zero-filled tail
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def test_a_yaml_config_equals_the_same_run_from_flags(data_dirs, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data: [{data_dirs['rl']}, '{data_dirs['captions']}:2', {data_dirs['text']}]\n"
                   "preset: tiny\nbatch_size: 4\nseq-len: 64\nsteps: 3\nlog_every: 1\nlr: 0.002\nprogress: false\n")
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["--config", str(cfg), "--out", str(a), "--steps", "4"]) == 0  # a flag overrides the file
    assert main(_args(data_dirs, b, "--steps", "4", "--log-every", "1", "--lr", "0.002")) == 0
    ra, rb = RunRecord.read(a), RunRecord.read(b)
    assert ra.train.steps == 4 and ra.train.lr == 0.002 and ra.train.seq_len == 64
    assert {k: v for k, v in vars(ra.train).items() if k != "out"} == \
        {k: v for k, v in vars(rb.train).items() if k != "out"}
    assert [r["loss"] for r in _metrics(a)] == [r["loss"] for r in _metrics(b)]
    sa, sb = read_checkpoint(a), read_checkpoint(b)
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    # the record: typed, with versions and (in a git checkout) the commit
    assert set(ra.versions) == {"torch", "pyarrow", "gato-kit"} and ra.versions["torch"] == torch.__version__
    if (Path(__file__).resolve().parents[2] / ".git").exists():
        assert ra.git_commit and len(ra.git_commit.split("-")[0]) == 40
    assert ra.model.seq_len == 64 and ra.tasks == ["cartpole", "digits", "text"]


@pytest.mark.parametrize("text, what", [("batch_size: 0\n", "--batch-size must be at least 1"),
                                        ("bach_size: 4\n", "unknown option 'bach_size'"),
                                        ("lr: fast\n", "--lr must be a finite number"),
                                        ("- a list\n", "expected a mapping")])
def test_a_bad_config_file_is_bad_usage_naming_file_and_field(data_dirs, tmp_path, capsys, text, what):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    assert main(["--config", str(cfg), "--data", data_dirs["text"], "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert what in err and str(cfg) in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_every_option_is_defined_once_and_the_cli_is_built_from_it():
    p = build_parser()
    flags = {a.dest: a for a in p._actions if a.dest not in ("help", "config")}
    assert set(flags) == set(FIELDS)
    for name, f in FIELDS.items():
        assert flags[name].help.startswith(f.metadata["help"]), name
    with pytest.raises(SystemExit):  # no abbreviations: --batch would be a silent --batch-size
        p.parse_args(["--data", "x", "--out", "y", "--batch", "4"])
    assert p.parse_args(["--data", "x", "--out", "y"]).__dict__ == {"data": ["x"], "out": "y"}


def test_a_damaged_run_record_is_refused_on_resume(data_dirs, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(data_dirs, run, "--steps", "1")) == 0
    rec = json.loads((run / "config.json").read_text())
    rec["train"]["batch_size"] = "four"
    (run / "config.json").write_text(json.dumps(rec))
    capsys.readouterr()
    assert main(_args(data_dirs, run, "--steps", "2")) == 1
    err = capsys.readouterr().err
    assert "config.json" in err and "batch-size" in err and err.strip().count("\n") == 0


def test_a_run_record_that_disagrees_with_the_checkpoint_is_refused_on_resume(data_dirs, tmp_path, capsys):
    """config.json is read typed and checked against the checkpoint on resume: a record edited to
    another --batch-size (a valid value) no longer describes the run, and resuming says so."""
    run = tmp_path / "run"
    assert main(_args(data_dirs, run, "--steps", "1")) == 0
    rec = json.loads((run / "config.json").read_text())
    rec["train"]["batch_size"] += 1
    (run / "config.json").write_text(json.dumps(rec))
    capsys.readouterr()
    assert main(_args(data_dirs, run, "--steps", "2")) == 1
    err = capsys.readouterr().err
    assert "config.json" in err and "--batch-size" in err and "disagrees" in err and err.strip().count("\n") == 0


def test_step_copies_keep_last_and_keep_best_across_a_resume(data_dirs, tmp_path, sigterm_at_step):
    """The same run straight and stopped by SIGTERM at step 5 then resumed keeps the same step copies,
    the same best checkpoint, and the same metrics."""
    common = ["--steps", "8", "--log-every", "1", "--save-every", "2", "--keep-last", "2", "--eval-every", "2",
              "--eval-steps", "1", "--keep-best", "eval_loss/digits", "--warmup", "2"]
    straight, stopped = tmp_path / "a", tmp_path / "b"
    assert main(_args(data_dirs, straight, *common)) == 0
    sigterm_at_step(4)
    assert main(_args(data_dirs, stopped, *common)) == 0
    assert read_checkpoint(stopped)["step"] == 5
    assert [s for s, _ in step_copies(stopped)] == [4, 5]  # keep-last 2, the SIGTERM save included
    sigterm_at_step(None)
    assert main(_args(data_dirs, stopped, *common)) == 0
    for run in (straight, stopped):
        assert [s for s, _ in step_copies(run)] == [6, 8]
        for s, p in step_copies(run):
            assert read_checkpoint(p)["step"] == s
    ma, mb = _metrics(straight), _metrics(stopped)
    assert [r["loss"] for r in ma] == [r["loss"] for r in mb]
    evals = [(r["step"], r["eval_loss/digits"]) for r in ma if "eval_loss/digits" in r]
    best_step = min(evals, key=lambda e: e[1])[0]
    ba, bb = read_checkpoint(straight / BEST_NAME), read_checkpoint(stopped / BEST_NAME)
    assert ba["step"] == bb["step"] == best_step
    assert ba["best"] == {"metric": "eval_loss/digits", "value": min(e[1] for e in evals), "step": best_step}
    assert all(torch.equal(ba["model"][k], bb["model"][k]) for k in ba["model"])


def test_resume_takes_the_latest_complete_checkpoint(data_dirs, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(data_dirs, run, "--steps", "4", "--save-every", "2", "--log-every", "1")) == 0
    data = bytearray((run / CHECKPOINT_NAME).read_bytes())
    (run / CHECKPOINT_NAME).unlink()  # the step-4 copy is the same file (a hard link): damage a fresh one
    data[len(data) // 2] ^= 0xFF
    (run / CHECKPOINT_NAME).write_bytes(bytes(data))
    (step_copies(run)[-1][1]).unlink()  # and the step-4 copy gone: step 2 is the latest complete one
    capsys.readouterr()
    assert main(_args(data_dirs, run, "--steps", "5", "--save-every", "2", "--log-every", "1")) == 0
    err = capsys.readouterr().err
    assert "passing over" in err and "step-00000002.pt" in err and "resumed from step 2" in err
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3, 4, 5]
    assert read_checkpoint(run)["step"] == 5


def test_summary_final_loss_and_task_losses_share_one_window(data_dirs, tmp_path, capsys):
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(_args(data_dirs, run, "--steps", "6", "--log-every", "3")) == 0
    out = capsys.readouterr().out
    last = _metrics(run)[-1]
    tasks = ["cartpole", "digits", "text"]
    counts = {t: last[f"target_tokens/{t}"] for t in tasks}
    mixed = sum(last[f"loss/{t}"] * counts[t] for t in tasks if counts[t]) / sum(counts.values())
    assert f"final loss {mixed:.4f} (steps 4-6)" in out
    summary = out[out.index("final loss"):]  # (notes printed before it may name the tasks' folders)
    for t in tasks:
        assert f"{last[f'loss/{t}']:.4f}" in summary.split(t, 1)[1].splitlines()[0]


def test_train_args_from_dict_refuses_wrong_types():
    with pytest.raises(ValueError, match="--steps must be an integer"):
        TrainArgs.from_dict({"steps": 1.5})
    assert TrainArgs.from_dict({"steps": 3, "data": ["x"]}).steps == 3


def test_eval_loss_is_measured_on_the_held_out_split(tmp_path, sp_model_path, corpus_path, capsys):
    """A directory converted with --test-share: training reads only its train shards, evaluation only
    its test shards; a directory without a test split says so once."""
    from converters.cli import main as tokenize
    from schemas.manifest import Manifest

    docs = tmp_path / "docs.txt"
    lines = Path(corpus_path).read_text().splitlines()[:400]
    docs.write_text("\n\n".join(" ".join(lines[i:i + 4]) for i in range(0, 400, 4)) + "\n")
    shards = tmp_path / "text"
    assert tokenize(["text", str(docs), "--out", str(shards), "--text-tokenizer", sp_model_path, "--split",
                     "blank-line", "--test-share", "0.2", "--shard-size", "8KB", "--no-progress"]) == 0
    m = Manifest.read(shards)
    assert m.rows_in("test") > 5 and m.rows_in("train") > 50
    args = TrainArgs(data=[str(shards)], out=str(tmp_path / "run"), batch_size=2, seq_len=64, steps=2,
                     eval_steps=2, progress=False)
    trainer = train_mod.Trainer(args)
    assert trainer.loader.sources[0].total_rows == m.rows_in("train")
    capsys.readouterr()
    assert "eval_loss" in trainer.evaluate()
    (loader, _), = trainer.held_out.loaders
    assert loader.sources[0].total_rows == m.rows_in("test")
    from schemas.shard import open_shard
    test_ids = {i for s in m.shards if s.split == "test" for i in open_shard(shards / s.name).column("source_id").to_pylist()}
    src = loader.sources[0]
    seen = {src.dir.table(k).column("source_id")[j].as_py() for k in range(len(src.dir.shards))
            for j in range(src.dir.table(k).num_rows)}
    assert seen == test_ids
    assert "no test split" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def cartpole_with_spec(tmp_path_factory, text_tokenizer, sp_model_path):
    """A CartPole directory an eval suite can act from (its manifest holds the episode spec)."""
    from tests.support.shards import cartpole_episodes, write_shard_dir
    from tokenizer_kit.sequence import EpisodeSpec, FieldSpec

    layout = text_tokenizer.layout()
    rows, rets = cartpole_episodes(layout, 12)
    spec = EpisodeSpec((FieldSpec("obs", "continuous", (4,)),), (FieldSpec("action", "discrete", ()),))
    return write_shard_dir(tmp_path_factory.mktemp("cps") / "cartpole", rows, [f"cp-{i}" for i in range(12)],
                           layout, "rl", "cartpole", rows_per_shard=6, episode_spec=spec, returns=rets,
                           tokenizer_path=sp_model_path)


def test_eval_suite_during_training_logs_scores_and_keeps_the_stream(cartpole_with_spec, data_dirs, tmp_path,
                                                                      sigterm_at_step):
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"tasks:\n  - env: CartPole-v1\n    name: cartpole\n    data: {cartpole_with_spec}\n"
                     "    episodes: 2\n    max_steps: 15\n")
    base = ["--data", str(cartpole_with_spec), data_dirs["text"], "--preset", "tiny", "--batch-size", "4",
            "--seq-len", "64", "--no-progress", "--steps", "6", "--log-every", "1", "--save-every", "2",
            "--eval-every", "2", "--eval-steps", "1", "--warmup", "2"]
    plain, straight, stopped = tmp_path / "plain", tmp_path / "a", tmp_path / "b"
    assert main(base + ["--out", str(plain)]) == 0
    with_suite = base + ["--eval-suite", str(suite), "--log", "jsonl,tensorboard", "--keep-best", "eval/score"]
    assert main(with_suite + ["--out", str(straight)]) == 0
    recs = _metrics(straight)
    assert [r["step"] for r in recs if "eval/score" in r] == [2, 4, 6]
    for r in recs:
        if "eval/score" in r:
            assert 1 <= r["eval/cartpole/return"] <= 15 and r["eval/score"] == r["eval/cartpole/score"]
    # the training stream is the same as without the suite
    assert [r["loss"] for r in recs] == [r["loss"] for r in _metrics(plain)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(straight / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/score")] == [2, 4, 6]
    # stopped by SIGTERM at step 3, resumed: the same metrics, evaluation scores included
    sigterm_at_step(2)
    assert main(with_suite + ["--out", str(stopped)]) == 0
    sigterm_at_step(None)
    assert main(with_suite + ["--out", str(stopped)]) == 0
    drop = ("time", "elapsed_s", "tokens_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in _metrics(stopped)] == \
        [{k: v for k, v in r.items() if k not in drop} for r in recs]
    best = max((r["eval/score"], -r["step"]) for r in recs if "eval/score" in r)
    assert read_checkpoint(stopped / BEST_NAME)["step"] == read_checkpoint(straight / BEST_NAME)["step"] == -best[1]


def test_a_run_in_a_bucket_keeps_its_step_copies_and_events_there(data_dirs, tmp_path, s3_server,
                                                                 sigterm_at_step):
    """--out s3://: step copies pruned to --keep-last and TensorBoard events are uploaded too, and a
    resume on another machine (an empty cache) continues from the bucket."""
    import s3fs

    from tests.support.s3 import make_bucket
    url = make_bucket("research-runs") + "/a"
    common = ["--steps", "6", "--log-every", "1", "--save-every", "2", "--keep-last", "2", "--log", "tensorboard"]
    sigterm_at_step(2)
    assert main(_args(data_dirs, url, "--cache-dir", str(tmp_path / "c1"), *common)) == 0
    sigterm_at_step(None)
    assert main(_args(data_dirs, url, "--cache-dir", str(tmp_path / "c2"), *common)) == 0
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    root = url.removeprefix("s3://")
    names = sorted(p[len(root) + 1:] for p in fs.find(root))
    assert [n for n in names if n.startswith("checkpoints/")] == ["checkpoints/step-00000004.pt",
                                                                  "checkpoints/step-00000006.pt"]
    assert any(n.startswith("tb/events.out.tfevents") for n in names)
    assert {"checkpoint.pt", "config.json", "metrics.jsonl", "loss.png"} <= set(names)
    metrics = [json.loads(x) for x in fs.cat_file(f"{root}/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in metrics] == [1, 2, 3, 4, 5, 6]


def test_keep_best_of_a_metric_never_evaluated_is_bad_usage(data_dirs, tmp_path, capsys):
    assert main(_args(data_dirs, tmp_path / "r", "--steps", "1", "--keep-best", "eval/score")) == 2
    assert "--keep-best 'eval/score' is not a metric this run evaluates" in capsys.readouterr().err
