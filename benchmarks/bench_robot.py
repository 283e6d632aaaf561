"""Robot datasets: LeRobot conversion against the video decoder alone, RLDS conversion against the
protobuf parse alone, and 2 workers against 1 on a LeRobot folder.

Inputs (made here with tests/converters/robot_fixtures.py, deterministic): a LeRobot v3.0 folder
with two cameras of 96x128 frames (AV1 and H.264, every episode of a camera back to back in one
MP4), a 6-d state, a 6-d action and two task strings; an RLDS folder (two JPEG cameras, state,
action, language instruction) of the same shape in TFRecord files.

* lerobot: camera frames per second of `gato-tokenize rl` (in-process, 1 worker, every stage:
  Parquet, decoding by timestamp, tokenising, writing) over frames per second of PyAV decoding
  every frame of the same MP4s to RGB arrays and nothing else. Target 0.8x.
* rlds: episodes per second of `gato-tokenize rl` on the RLDS folder over episodes per second of
  reading the records (CRCs checked) and parsing the tf.train.Example protobufs alone. Target 0.8x.
  The conversion also decodes every JPEG, which the parse alone does not: a second row gives the
  bound of parse + JPEG decode, which is what a converter of these episodes cannot beat.
* workers: wall time of `--workers 1` over `--workers 2` on the LeRobot folder (one episode per
  unit). Target 1.7x; the load average at the start is printed with it (the machine is shared).

    .venv/bin/python benchmarks/bench_robot.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(ROOT / "tests" / "converters")):
    if p not in sys.path:
        sys.path.insert(0, p)

TARGET = 0.8
SCALING_TARGET = 1.7


def _convert(root: Path, out: Path, model: str, workers: int = 1, per_unit: int = 4) -> float:
    from converters.cli import main
    t0 = time.perf_counter()
    rc = main(["rl", str(root), "--out", str(out), "--text-tokenizer", model, "--no-progress",
               "--workers", str(workers), "--episodes-per-unit", str(per_unit)])
    if rc != 0:
        raise RuntimeError(f"conversion of {root} failed ({rc})")
    return time.perf_counter() - t0


def _model(directory: Path) -> str:
    import sentencepiece as spm
    from robot_fixtures import TASKS
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(TASKS * 50 + [f"move the arm {i} steps" for i in range(200)]) + "\n")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(directory / "tok"), vocab_size=64,
                                   model_type="bpe", minloglevel=2)
    return str(directory / "tok.model")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    import numpy as np
    from converters.rl_sources.tfrecord import parse_example, read_records
    from converters.rl_sources.video import decode_all
    from robot_fixtures import CAMERAS, make_episodes, make_rlds_episodes, write_lerobot_v3, write_rlds

    episodes, steps = (6, 40) if args.quick else (24, 100)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = _model(tmp)
        eps = make_episodes([steps] * episodes, seed=0, size=(96, 128))
        lr = write_lerobot_v3(tmp / "lerobot", eps, data_files=2)
        frames = episodes * steps * len(CAMERAS)
        _convert(lr, tmp / "warm", model)  # imports and first-use costs out of the timing
        t0 = time.perf_counter()
        for cam in CAMERAS:
            decode_all(str(lr / "videos" / cam / "chunk-000" / "file-000.mp4"))
        decoder = frames / (time.perf_counter() - t0)
        conv = frames / _convert(lr, tmp / "one", model)
        rows.append({"name": "lerobot conversion frames/s", "figure": conv, "unit": "frames/s",
                     "baseline": decoder, "baseline_name": "PyAV decode alone", "ratio": conv / decoder,
                     "target": TARGET})
        load = os.getloadavg()[0]
        one = _convert(lr, tmp / "w1", model, workers=1, per_unit=2)
        two = _convert(lr, tmp / "w2", model, workers=2, per_unit=2)
        rows.append({"name": f"lerobot 2 workers vs 1 (load {load:.1f})", "figure": one / two, "unit": "x",
                     "baseline": one, "baseline_name": "s with 1 worker", "ratio": one / two,
                     "target": SCALING_TARGET})

        rl_eps = make_rlds_episodes([steps] * episodes, seed=0)
        rd = write_rlds(tmp / "rlds", rl_eps, shards=2)
        _convert(rd, tmp / "rwarm", model, per_unit=4)
        t0 = time.perf_counter()
        for f in sorted(rd.glob("*.tfrecord-*")):
            for _, data in read_records(str(f)):
                parse_example(data)
        parse = episodes / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for f in sorted(rd.glob("*.tfrecord-*")):
            for _, data in read_records(str(f)):
                ex = parse_example(data)
                for key in ("steps/observation/image", "steps/observation/hand_image"):
                    import simplejpeg
                    [simplejpeg.decode_jpeg(b) for b in ex[key]]
        bound = episodes / (time.perf_counter() - t0)
        conv = episodes / _convert(rd, tmp / "r1", model, per_unit=4)
        rows.append({"name": "rlds conversion episodes/s vs parse", "figure": conv, "unit": "episodes/s",
                     "baseline": parse, "baseline_name": "read + CRC + protobuf parse alone", "ratio": conv / parse,
                     "target": TARGET})
        rows.append({"name": "rlds conversion vs parse + JPEG decode", "figure": conv, "unit": "episodes/s",
                     "baseline": bound, "baseline_name": "parse + JPEG decode alone", "ratio": conv / bound,
                     "target": TARGET})
        del np
    return rows


if __name__ == "__main__":
    for r in main(sys.argv[1:]):
        print(r)
