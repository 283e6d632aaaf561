"""Shard writer: per-unit shards rolled by size, byte-identical output for any worker count, engine
or partitioning, resume, finalize, the lock, write faults, --on-error, statistics and the manifest."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pyarrow as pa
import pytest

from converters.base import Record, SourceError, WorkUnit
from converters.text import TextConverter
from converters.writer import WORK_DIR, UsageError, convert, finalize
from schemas.manifest import Manifest
from schemas.shard import open_shard
from schemas.validate import validate_table
from tokenizer_kit.layout import MODALITY_NAMES
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, build_episode

from tests.support.crashing import CrashingText


def make_inputs(directory, files: int = 6, docs: int = 30, seed: int = 0) -> list[str]:
    words = "the robot arm grasps a red cube and opens the door to the left".split()
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(files):
        p = directory / f"part{f}.txt"
        p.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 60)))
                                 for _ in range(docs)) + "\n")
        paths.append(str(p))
    return paths


def text_converter(paths, tok, cls=TextConverter, unit_size=2000):
    return cls(paths, tok, tok.layout(), split="blank-line", unit_size=unit_size)


def run(conv, out, tok, **kw):
    kw.setdefault("shard_size", 5_000)
    return convert(conv, out, layout=tok.layout(), tokenizer_path=tok.path, progress=False, **kw)


def shard_bytes(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.arrow"))}


def all_rows(out) -> pa.Table:
    return pa.concat_tables([open_shard(out / s.name) for s in Manifest.read(out).shards])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, inputs, text_tokenizer):
    """One uninterrupted single-worker run: what every other way of running must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "out"
    run(text_converter(inputs, text_tokenizer), out, text_tokenizer)
    return out


def test_shards_roll_at_target_size_and_manifest_vouches_for_them(reference, inputs, text_tokenizer, tmp_path):
    m = Manifest.read(reference)
    assert len(m.shards) >= 3
    assert not (reference / WORK_DIR).exists()
    for s in m.shards:
        path = reference / s.name
        table = open_shard(path)
        assert s.bytes == path.stat().st_size
        assert s.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert s.rows == table.num_rows
        assert s.tokens == sum(len(t) for t in table.column("tokens").to_pylist())
        assert s.bytes < 5_000 * 1.5  # target plus the framing of its batches; no shard is wildly over
        assert validate_table(table, m.vocab_layout) == []
    # the same rows as one big shard, in input order
    big = tmp_path / "big"
    run(text_converter(inputs, text_tokenizer), big, text_tokenizer, shard_size=10**9)
    units = text_converter(inputs, text_tokenizer).work_units()
    assert [s.name for s in Manifest.read(big).shards] == [f"shard-{i:05d}-000.arrow" for i in range(len(units))]
    assert len(m.shards) > len(units)  # some units roll over into a second shard
    assert all_rows(big).equals(all_rows(reference))
    sources = all_rows(reference).column("source_id").to_pylist()
    assert [s.split("@")[0] for s in sources] == sorted(s.split("@")[0] for s in sources)
    assert m.total_rows == 6 * 30 == m.stats["rows"]
    assert m.stats["tokens"] == m.total_tokens == m.stats["tokens_by_modality"]["text"]
    assert (reference / "tokenizer.model").read_bytes() == open(text_tokenizer.path, "rb").read()
    assert m.tokenizer_sha256 == hashlib.sha256((reference / "tokenizer.model").read_bytes()).hexdigest()
    assert m.layout == text_tokenizer.layout().to_dict()
    assert m.converter == "text" and m.options["split"] == "blank-line"
    assert m.tasks == ["text"] and m.stats["rows_per_task"] == {"text": 180}


def test_two_workers_write_the_same_bytes(reference, inputs, text_tokenizer, tmp_path):
    res = run(text_converter(inputs, text_tokenizer), tmp_path / "w2", text_tokenizer, workers=2)
    assert res.units_converted == res.units_total > 2
    assert shard_bytes(tmp_path / "w2") == shard_bytes(reference)
    assert Manifest.read(tmp_path / "w2").shards == Manifest.read(reference).shards


def test_resume_after_a_crash_converts_only_the_rest(reference, inputs, text_tokenizer, tmp_path):
    out = tmp_path / "out"
    units = text_converter(inputs, text_tokenizer).work_units()
    crashing = text_converter(inputs, text_tokenizer, CrashingText)
    crashing.crash_at = units[7].key
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(crashing, out, text_tokenizer)
    assert not (out / "manifest.json").exists() and not list(out.glob(".*tmp*"))
    assert len(list((out / WORK_DIR).glob("unit-*.json"))) == 7
    res = run(text_converter(inputs, text_tokenizer), out, text_tokenizer)
    assert res.units_converted == len(units) - 7
    assert shard_bytes(out) == shard_bytes(reference)


def test_partitions_combine_into_the_single_run(reference, inputs, text_tokenizer, tmp_path):
    out = tmp_path / "out"
    total = 0
    for i in range(3):
        res = run(text_converter(inputs, text_tokenizer), out, text_tokenizer, num_partitions=3, partition=i)
        assert not res.complete and res.manifest is None
        assert not (out / "manifest.json").exists()
        total += res.units_converted
        if i == 1:
            with pytest.raises(SourceError, match=r"of \d+ work units are not converted yet"):
                finalize(out)
    assert total == res.units_total
    assert shard_bytes(out) == shard_bytes(reference)  # the shards are final as the partitions wrote them
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert finalize(out).shards == Manifest.read(reference).shards
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == before  # no byte copied
    assert not (out / WORK_DIR).exists()
    final = run(text_converter(inputs, text_tokenizer), out, text_tokenizer)
    assert final.up_to_date and final.units_converted == 0


def test_a_changed_input_is_converted_again(text_tokenizer, tmp_path):
    paths = make_inputs(tmp_path / "in", files=2, docs=5)
    out = tmp_path / "out"
    run(text_converter(paths, text_tokenizer), out, text_tokenizer, num_partitions=2, partition=0)
    data = open(paths[0]).read()
    assert "robot" in data
    with open(paths[0], "w") as f:  # same size, same unit boundaries, other words
        f.write(data.replace("robot", "ROBOT"))
    res = run(text_converter(paths, text_tokenizer), out, text_tokenizer)
    assert res.units_converted == res.units_total  # the old unit's work no longer matches its file
    run(text_converter(paths, text_tokenizer), tmp_path / "fresh", text_tokenizer)
    assert shard_bytes(out) == shard_bytes(tmp_path / "fresh")


def test_rerun_is_up_to_date_and_a_different_conversion_is_refused(reference, inputs, text_tokenizer):
    before = shard_bytes(reference)
    res = run(text_converter(inputs, text_tokenizer), reference, text_tokenizer)
    assert res.up_to_date and res.units_converted == 0 and shard_bytes(reference) == before
    with pytest.raises(UsageError, match="already holds a finished conversion"):
        run(text_converter(inputs, text_tokenizer), reference, text_tokenizer, shard_size=10**6)
    with pytest.raises(UsageError):
        run(text_converter(inputs[:2], text_tokenizer), reference, text_tokenizer)


@pytest.mark.slow
def test_fail_with_workers_leaves_nothing_half_written(inputs, text_tokenizer, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine words\n\nbroken \xc3\x28 bytes\n")
    out = tmp_path / "out"
    with pytest.raises(SourceError, match=r"bad\.txt: line 3 \(byte 19\): not UTF-8"):
        run(text_converter(inputs + [str(bad)], text_tokenizer), out, text_tokenizer, workers=2)
    assert not (out / "manifest.json").exists() and not list(out.rglob("*tmp*"))
    markers = list((out / WORK_DIR).glob("unit-*.json"))  # finished units stay, for a resume
    assert {p.name for p in out.glob("shard-*")} == {
        s["name"] for p in markers for s in __import__("json").loads(p.read_text())["shards"]}


def test_units_finished_under_skip_fail_a_later_fail_run(inputs, text_tokenizer, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine words\n\nbroken \xff bytes\n")
    out = tmp_path / "out"
    conv = text_converter([str(bad)], text_tokenizer)
    res = run(conv, out, text_tokenizer, on_error="skip", num_partitions=2, partition=0)
    assert res.units_converted == 1
    with pytest.raises(SourceError, match="not UTF-8"):
        run(conv, out, text_tokenizer)
    assert not (out / "manifest.json").exists()
    res = run(conv, out, text_tokenizer, on_error="skip")
    assert res.manifest.total_rows == 1 and len(res.manifest.skipped) == 1


# --- RL rows: statistics, episode spec, RL columns -------------------------------------------------

SPEC = EpisodeSpec((FieldSpec("pos", "continuous", (2,)),), (FieldSpec("act", "discrete", (1,)),))


class Episodes:
    """A small RL converter: unit k holds episodes of a seeded random walk; one bad episode."""

    name = "rl"
    rl = True

    def __init__(self, layout, units: int = 3, per_unit: int = 4):
        self.layout, self.units, self.per_unit = layout, units, per_unit

    def work_units(self):
        return [WorkUnit(f"walk-{k}", f"walk-{k}") for k in range(self.units)]

    def options(self):
        return {"env": "walk", "episode_spec": SPEC.to_dict()}

    def episodes(self, unit):
        rng = np.random.default_rng(int(unit.key.split("-")[1]))
        for e in range(self.per_unit):
            steps = int(rng.integers(2, 6))
            yield (f"{unit.key}/ep{e}", rng.normal(0, 3, (steps, 2)), rng.integers(0, 4, (steps, 1)),
                   float(rng.normal()), e == 2 and unit.key == "walk-1")

    def convert_unit(self, unit):
        for sid, pos, act, ret, bad in self.episodes(unit):
            if bad:
                yield Record(sid, skip_reason=f"walks.h5: episode {sid[-1]}: step 1 field 'pos': NaN")
                continue
            row = build_episode({"pos": pos}, {"act": act}, SPEC, self.layout)
            err = np.abs(pos).ravel() * 0.01
            yield Record(sid, row, task="walk", num_steps=len(pos), episode_return=ret,
                         field_errors={"observation/pos": (float(err.max()), float(err.sum()), err.size)})


def test_rl_statistics_columns_and_episode_spec(layout, tmp_path):
    conv = Episodes(layout)
    res = convert(conv, tmp_path / "out", layout=layout, on_error="skip", progress=False)
    m = res.manifest
    good = [ep for u in conv.work_units() for ep in conv.episodes(u) if not ep[4]]
    returns = np.array([ep[3] for ep in good])
    errs = np.concatenate([np.abs(ep[1]).ravel() * 0.01 for ep in good])
    r = m.stats["episode_return"]
    assert r["count"] == len(good) == m.total_rows == 11
    assert np.isclose(r["min"], returns.min()) and np.isclose(r["max"], returns.max())
    assert np.isclose(r["mean"], returns.mean()) and np.isclose(r["std"], returns.std())
    fe = m.stats["field_errors"]["observation/pos"]
    assert fe["count"] == errs.size and np.isclose(fe["max"], errs.max()) and np.isclose(fe["mean"], errs.mean())
    assert m.episode_spec == SPEC.to_dict() and "episode_spec" not in m.options and m.options == {"env": "walk"}
    assert m.skipped == [{"source": "walk-1/ep2", "reason": "walks.h5: episode 2: step 1 field 'pos': NaN"}]
    assert m.tasks == ["walk"] and m.tokenizer_sha256 is None and not (tmp_path / "out" / "tokenizer.model").exists()
    table = all_rows(tmp_path / "out")
    assert validate_table(table, layout) == []
    assert table.column("episode_return").to_pylist() == [ep[3] for ep in good]
    assert table.column("num_steps").to_pylist() == [len(ep[1]) for ep in good]
    counts = np.bincount(table.column("modality").combine_chunks().values.to_numpy(), minlength=5)
    assert m.stats["tokens_by_modality"] == {MODALITY_NAMES[i]: int(c) for i, c in enumerate(counts)}
    # --task overrides the converter's task
    res = convert(conv, tmp_path / "out2", layout=layout, on_error="skip", task="maze", progress=False)
    assert res.manifest.tasks == ["maze"] and set(all_rows(tmp_path / "out2").column("task").to_pylist()) == {"maze"}
    # --on-error fail: the converter's reason, as it is
    with pytest.raises(SourceError, match=r"^walks\.h5: episode 2: step 1 field 'pos': NaN$"):
        convert(conv, tmp_path / "out3", layout=layout, progress=False)


class Broken(Episodes):
    """A converter with a bug: its second unit's rows put a text id past the text vocabulary."""

    def convert_unit(self, unit):
        for rec in super().convert_unit(unit):
            if rec.row is not None and unit.key == "walk-1":
                rec.row.modality[0] = 0  # now a "text" token with a continuous id
                rec.row.loss_mask[0] = 1
                rec.row.local_pos[:] = -1
            yield rec


def test_a_row_breaking_the_contract_never_reaches_a_shard(layout, tmp_path):
    with pytest.raises(SourceError, match=r"the rl converter built a row that breaks the shard contract: row 0 "
                                          r"\(walk-1/ep0\), column tokens: id outside its modality's range"):
        convert(Broken(layout), tmp_path / "out", layout=layout, on_error="skip", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists() and not list((tmp_path / "out").glob("shard-00001-*"))


# --- what makes it cheap must not cost a guarantee --------------------------------------------------

def test_shards_are_plain_arrow_streams(reference):
    """Shards are batch messages copied as bytes: exactly what pyarrow's own stream writer makes of them."""
    for s in Manifest.read(reference).shards:
        table = open_shard(reference / s.name, full=False)  # as stored
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            for b in table.to_batches():
                w.write_batch(b)
        assert sink.getvalue().to_pybytes() == (reference / s.name).read_bytes()


class DiesMidUnit(TextConverter):
    """The text converter, killed after `after` records of unit `crash_at` (some of them already written)."""

    crash_at: str = ""
    after: int = 0

    def convert_unit(self, unit):
        for k, rec in enumerate(super().convert_unit(unit)):
            if unit.key == self.crash_at and k == self.after:
                raise RuntimeError("simulated crash")
            yield rec


def test_killed_inside_a_unit_resumes_at_that_unit(reference, inputs, text_tokenizer, tmp_path, monkeypatch):
    import converters.writer.unit as unit_module
    monkeypatch.setattr(unit_module, "BATCH_ROWS", 3)  # so the unit has written batches when it dies
    ref = tmp_path / "ref"
    run(text_converter(inputs, text_tokenizer), ref, text_tokenizer)
    conv = text_converter(inputs, text_tokenizer)
    units = conv.work_units()
    k = next(i for i in range(len(units) // 2, len(units)) if sum(1 for _ in conv.convert_unit(units[i])) >= 6)
    dying = text_converter(inputs, text_tokenizer, DiesMidUnit)
    dying.crash_at, dying.after = units[k].key, 5
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(dying, out, text_tokenizer)
    assert not (out / "manifest.json").exists() and not list(out.rglob("*tmp*"))
    assert len(list((out / WORK_DIR).glob("unit-*.json"))) == k
    res = run(text_converter(inputs, text_tokenizer), out, text_tokenizer)
    assert res.units_converted == len(units) - k
    assert shard_bytes(out) == shard_bytes(ref) and Manifest.read(out).shards == Manifest.read(ref).shards


class Filtering(Episodes):
    """Episodes whose converter drops the ones with a negative return on purpose."""

    def convert_unit(self, unit):
        for rec in super().convert_unit(unit):
            yield Record(rec.source_id, filtered=True) if rec.row is not None and rec.episode_return < 0 else rec


def test_filtered_records_are_counted_apart_from_skipped_ones(layout, tmp_path):
    conv = Filtering(layout)
    dropped = sum(ep[3] < 0 and not ep[4] for u in conv.work_units() for ep in conv.episodes(u))
    assert 0 < dropped < 11
    res = convert(conv, tmp_path / "out", layout=layout, on_error="skip", progress=False)
    from converters.commands.convert import summary
    m = res.manifest
    assert m.stats["filtered"] == dropped and m.total_rows == 11 - dropped
    assert f"1 skipped, {dropped} filtered out," in summary(res)
    assert m.stats["skipped"] == 1 and [s["source"] for s in m.skipped] == ["walk-1/ep2"]
    assert min(all_rows(tmp_path / "out").column("episode_return").to_pylist()) >= 0
    m = convert(Episodes(layout), tmp_path / "all", layout=layout, on_error="skip", progress=False).manifest
    assert m.stats["filtered"] == 0




# --- statistics a manifest cannot hold --------------------------------------------------------------

class HugeReturns(Episodes):
    """Rewards of 1e308: most episodes return 1e308, the first of each unit two of them (inf)."""

    def convert_unit(self, unit):
        for rec in super().convert_unit(unit):
            if rec.row is not None:
                rec.episode_return = float(np.sum([1e308, 1e308 if rec.source_id.endswith("ep0") else 0.0]))
            yield rec


def test_returns_that_sum_to_infinity_are_refused_naming_the_record(layout, tmp_path):
    import json
    import warnings
    warnings.simplefilter("ignore", RuntimeWarning)  # the overflow in np.sum
    with pytest.raises(SourceError, match=r"^walk-0/ep0: episode return inf cannot go into the statistics"):
        convert(HugeReturns(layout), tmp_path / "out", layout=layout, progress=False)
    res = convert(HugeReturns(layout), tmp_path / "skip", layout=layout, on_error="skip", progress=False)

    def no_constant(name):
        raise AssertionError(f"{name} in the manifest")

    r = json.loads((tmp_path / "skip" / "manifest.json").read_text(), parse_constant=no_constant)["stats"]
    assert r["episode_return"] == {"count": 8, "min": 1e308, "max": 1e308, "mean": 1e308, "std": 0.0}
    assert sorted(s["source"] for s in res.manifest.skipped) == ["walk-0/ep0", "walk-1/ep0", "walk-1/ep2",
                                                                 "walk-2/ep0"]


# --- compression ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_shards_hold_the_same_rows(reference, inputs, text_tokenizer, tmp_path, codec):
    out = tmp_path / codec
    m = run(text_converter(inputs, text_tokenizer), out, text_tokenizer, compression=codec).manifest
    assert m.compression == codec and Manifest.read(out).compression == codec
    assert all_rows(out).equals(all_rows(reference))
    for s in m.shards:
        assert s.sha256 == hashlib.sha256((out / s.name).read_bytes()).hexdigest()


# --- one writer per output --------------------------------------------------------------------------------

def test_a_second_writer_exits_2_and_a_stale_lock_is_taken_over(inputs, text_tokenizer, tmp_path, capsys):
    import json
    import socket
    import subprocess
    import sys
    from converters.cli import main
    from converters.writer.lock import OutLock
    out = tmp_path / "out"
    out.mkdir()
    argv = ["text", *inputs, "--text-tokenizer", str(text_tokenizer.path), "--split", "blank-line", "--out", str(out),
            "--no-progress"]
    with OutLock(str(out)):  # a live writer: this process
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"is being written by process {__import__('os').getpid()}" in err
    assert not (out / "manifest.json").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    assert main(argv) == 0 and (out / "manifest.json").exists() and not (out / ".lock").exists()


# --- write faults ------------------------------------------------------------------------------------------

def test_a_write_the_disk_refuses_is_one_line_and_leaves_no_temporary_file(inputs, text_tokenizer, tmp_path):
    """A real refusal by the kernel: the child may write no file larger than the tokenizer plus
    64 KiB (RLIMIT_FSIZE: EFBIG at the write, as ENOSPC would be on a full disk)."""
    import os
    import subprocess
    import sys
    out = tmp_path / "out"
    inputs = make_inputs(tmp_path / "in", files=1, docs=3000)
    limit = os.path.getsize(text_tokenizer.path) + (1 << 16)
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "from converters.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = ["text", *inputs, "--text-tokenizer", str(text_tokenizer.path), "--split", "blank-line", "--out", str(out),
            "--no-progress", "--unit-size", "1MB", "--shard-size", "1GB"]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path.cwd())})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "cannot write shard-" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(out.rglob("*tmp*")) and not (out / "manifest.json").exists() and not list(out.glob("shard-*"))
    assert not (out / ".lock").exists()


# --- kill -9 of the driver -----------------------------------------------------------------------------

def test_kill_9_of_the_driver_then_the_same_command_converts_only_the_rest(reference, inputs, text_tokenizer,
                                                                            tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "out"
    code = ("import sys, time; from converters.text import TextConverter; import converters.text as t\n"
            "class Slow(TextConverter):\n"
            "    def convert_unit(self, unit):\n"
            "        time.sleep(0.3); yield from super().convert_unit(unit)\n"
            "t.TextConverter = Slow\n"
            "from converters.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = ["text", *inputs, "--text-tokenizer", str(text_tokenizer.path), "--split", "blank-line", "--out", str(out),
            "--no-progress", "--unit-size", "2000", "--shard-size", "5000"]
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.time() + 60
    while len(list(out.glob(".work/unit-*.json"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob(".work/unit-*.json")))
    assert 3 <= done < len(text_converter(inputs, text_tokenizer).work_units())
    (out / ".tokenizer.model.tmp99999").write_bytes(b"half")  # as a kill during the copy would leave it
    res = run(text_converter(inputs, text_tokenizer), out, text_tokenizer)  # its lock is stale: taken over
    assert res.units_converted == res.units_total - done
    assert shard_bytes(out) == shard_bytes(reference) and not list(out.rglob("*tmp*"))


def test_workers_fork_on_linux_unless_hdf5_is_loaded(monkeypatch):
    import sys
    from converters.writer.engines import start_method
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delitem(sys.modules, "h5py", raising=False)
    assert start_method() == "fork"
    monkeypatch.setitem(sys.modules, "h5py", object())  # HDF5's library state must not reach a child
    assert start_method() == "spawn"
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.delitem(sys.modules, "h5py")
    assert start_method() == "spawn"


def test_spawned_workers_write_the_same_bytes(reference, inputs, text_tokenizer, tmp_path, monkeypatch):
    import converters.writer.engines as engines
    monkeypatch.setattr(engines, "start_method", lambda: "spawn")
    run(text_converter(inputs, text_tokenizer), tmp_path / "out", text_tokenizer, workers=2)
    assert shard_bytes(tmp_path / "out") == shard_bytes(reference)


def test_a_full_disk_is_one_line_and_leaves_what_a_resume_needs(text_tokenizer, tmp_path, capsys):
    """A real full disk: a tmpfs with room for the tokenizer and a few shards (needs root to mount)."""
    import os
    import subprocess
    from converters.cli import main
    disk = tmp_path / "disk"
    disk.mkdir()
    size = os.path.getsize(text_tokenizer.path) + 256 * 1024
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        inputs = make_inputs(tmp_path / "in", files=4, docs=800)
        argv = ["text", *inputs, "--text-tokenizer", str(text_tokenizer.path), "--split", "blank-line",
                "--out", str(disk / "out"), "--no-progress", "--unit-size", "8KB", "--shard-size", "64KB"]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "No space left on device" in err and "cannot write" in err
        out = disk / "out"
        assert not list(out.rglob("*tmp*")) and not (out / "manifest.json").exists() and not (out / ".lock").exists()
        done = list(out.glob(".work/unit-*.json"))
        assert done and {p.name for p in out.glob("shard-*")} == {
            s["name"] for p in done for s in __import__("json").loads(p.read_text())["shards"]}
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)  # lazy: a busy mount never outlives the test


class KillsItsWorker(TextConverter):
    """SIGKILLs the worker process converting unit `victim` (as the OOM killer would)."""

    victim: str = ""

    def convert_unit(self, unit):
        import os
        import signal
        if unit.key == self.victim:
            os.kill(os.getpid(), signal.SIGKILL)
        yield from super().convert_unit(unit)


def test_a_killed_local_worker_is_one_line_and_the_rerun_converts_the_rest(reference, inputs, text_tokenizer,
                                                                           tmp_path):
    conv = text_converter(inputs, text_tokenizer, KillsItsWorker)
    conv.victim = conv.work_units()[4].key
    out = tmp_path / "out"
    with pytest.raises(SourceError, match="a worker process died"):
        run(conv, out, text_tokenizer, workers=2)
    done = len(list(out.glob(".work/unit-*.json")))
    res = run(text_converter(inputs, text_tokenizer), out, text_tokenizer, workers=2)
    assert res.units_converted == res.units_total - done
    assert shard_bytes(out) == shard_bytes(reference) and not list(out.rglob("*tmp*"))
