"""Image-caption conversion speed against the floor it cannot beat: PIL decode + resize + patchify.

Input: a WebDataset tar of 256x256 JPEGs (random crops of scikit-learn's two sample photos, flipped
and colour-shuffled) with short captions. Baseline, measured in the same run on the same JPEG bytes
already in memory: `Image.open -> convert("RGB") -> resize(192, bilinear) -> patchify`. Figures:
the converter's `convert_unit` over the tar (reads the tar, decodes, resizes, tokenises the caption,
builds rows) and the full `gato-tokenize captions` path through the shard writer (rows -> Arrow
shard + manifest); and the converter on large (1280x854) JPEGs against the same baseline on those
JPEGs. Target: at least 0.8x of the baseline's images/s. The converter decodes JPEGs with
libjpeg-turbo's DCT scaling (simplejpeg; 256 -> 192 px is its 3/4 scale, no resize left): also
shown, for reference (no target), the converter on Pillow alone and the writer alone (the records
already converted, written to shards), so the writer's share of the end-to-end time is visible.

Timing is process CPU time (all run single-threaded in this process), best of the repeats:
on a machine shared with other jobs, wall-clock ratios swing by +/-30% from run to run, CPU time
by a few percent. Wall-clock ratios are printed too, for reference.

    .venv/bin/python -m benchmarks.bench_captions [--quick] [--images N]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np

from PIL import Image

from tokenizer_kit.images import patchify

ROOT = Path(__file__).resolve().parents[1]

SIZE = 192
TARGET = 0.8
WORDS = "a the photo of small large red green blue temple flower garden sky roof tree in on with and".split()


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """n 256x256 JPEGs (quality 90) cut from the two sample photos, with flips and channel shuffles."""
    from sklearn.datasets import load_sample_images
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - 256), rng.integers(0, p.shape[1] - 256)
        crop = p[y:y + 256, x:x + 256]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.ascontiguousarray(crop[:, :, rng.permutation(3)])
        b = io.BytesIO()
        Image.fromarray(crop).save(b, "JPEG", quality=90)
        out.append(b.getvalue())
    return out


def make_large_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """n 854x1280 JPEGs (the sample photos upscaled 2x, flipped and colour-shuffled), as cameras make."""
    from sklearn.datasets import load_sample_images
    photos = [np.asarray(Image.fromarray(p).resize((1280, 854), Image.BICUBIC)) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = photos[i % len(photos)][:, ::-1] if rng.random() < 0.5 else photos[i % len(photos)]
        b = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(p[:, :, rng.permutation(3)])).save(b, "JPEG", quality=90)
        out.append(b.getvalue())
    return out


def captions(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(6, 16))) for _ in range(n)]


def timed(fn) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of fn()."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def baseline(jpegs: list[bytes]) -> None:
    """Decode + resize + patchify, nothing else."""
    for data in jpegs:
        im = Image.open(io.BytesIO(data)).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        patchify(np.asarray(im, dtype=np.uint8))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 images, one repeat")
    ap.add_argument("--images", type=int, default=None, help="number of images (default 500)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats; the best of each is kept (default 3)")
    args = ap.parse_args(argv)
    n = args.images or (100 if args.quick else 500)
    repeats = args.repeats or (1 if args.quick else 3)

    import webdataset as wds

    import converters.captions.decode as captions_mod
    from converters.captions import CaptionConverter
    from converters.writer import convert
    from tokenizer_kit.text import TextTokenizer, train_tokenizer

    jpegs, caps = make_jpegs(n), captions(n)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "corpus.txt").write_text("\n".join(captions(2000, seed=1)) + "\n")
        tok = TextTokenizer(train_tokenizer([tmp / "corpus.txt"], 320, tmp / "bench.model"))
        layout = tok.layout()
        tar = tmp / "00000.tar"
        with wds.TarWriter(str(tar)) as w:
            for i, (j, c) in enumerate(zip(jpegs, caps)):
                w.write({"__key__": f"{i:06d}", "jpg": j, "txt": c, "json": b'{"caption": "unused"}'})
        converter = CaptionConverter([str(tar)], tok, layout, image_size=(SIZE, SIZE))
        unit = converter.work_units()[0]

        def direct() -> None:
            rows = sum(r.row is not None for r in converter.convert_unit(unit))
            assert rows == n, rows

        def through_writer(k: int) -> None:
            res = convert(converter, tmp / f"out{k}", layout=layout, tokenizer_path=tok.path, progress=False)
            assert res.manifest.total_rows == n

        large = make_large_jpegs(max(n // 10, 10))
        big_tar = tmp / "large.tar"
        with wds.TarWriter(str(big_tar)) as w:
            for i, j in enumerate(large):
                w.write({"__key__": f"{i:06d}", "jpg": j, "txt": caps[i]})
        big_converter = CaptionConverter([str(big_tar)], tok, layout, image_size=(SIZE, SIZE))

        def direct_large() -> None:
            assert sum(r.row is not None for r in big_converter.convert_unit(big_converter.work_units()[0])) == len(large)

        def pillow_only() -> None:  # the converter without libjpeg-turbo's DCT scaling
            saved, captions_mod.simplejpeg = captions_mod.simplejpeg, None
            try:
                direct()
            finally:
                captions_mod.simplejpeg = saved

        records = list(converter.convert_unit(unit))

        class Converted:  # the same converter's records, already made: what the writer alone costs
            name, rl = converter.name, converter.rl
            work_units, options = converter.work_units, converter.options

            def convert_unit(self, unit):
                return iter(records)

        def writer_only(k: int) -> None:
            res = convert(Converted(), tmp / f"pre{k}", layout=layout, tokenizer_path=tok.path, progress=False)
            assert res.manifest.total_rows == n

        through_writer(-1)  # warm-up: first-use imports of the writer's path
        times = {"base": [], "conv": [], "writ": [], "base_large": [], "conv_large": [], "pil": [], "wonly": []}
        for k in range(repeats):  # interleaved, so machine load hits all alike
            times["base"].append(timed(lambda: baseline(jpegs)))
            times["conv"].append(timed(direct))
            times["writ"].append(timed(lambda: through_writer(k)))
            times["base_large"].append(timed(lambda: baseline(large)))
            times["conv_large"].append(timed(direct_large))
            times["pil"].append(timed(pillow_only))
            times["wonly"].append(timed(lambda: writer_only(k)))
        del records
    count = {k: len(large) if k.endswith("large") else n for k in times}
    cpu = {k: count[k] / min(c for c, _ in v) for k, v in times.items()}
    wall = {k: count[k] / min(w for _, w in v) for k, v in times.items()}
    b = cpu["base"]
    rows = [
        {"name": "captions convert_unit (tar of 256px JPEGs -> rows), CPU time", "figure": round(cpu["conv"], 1),
         "unit": "img/s", "baseline": round(b, 1), "ratio": round(cpu["conv"] / b, 3), "target": TARGET},
        {"name": "captions through the shard writer (tar -> shards + manifest), CPU time",
         "figure": round(cpu["writ"], 1), "unit": "img/s", "baseline": round(b, 1),
         "ratio": round(cpu["writ"] / b, 3), "target": TARGET},
        {"name": "captions convert_unit, 1280x854 JPEGs (DCT-scaled decode), CPU time",
         "figure": round(cpu["conv_large"], 1), "unit": "img/s", "baseline": round(cpu["base_large"], 1),
         "ratio": round(cpu["conv_large"] / cpu["base_large"], 3), "target": TARGET},
    ]
    info = [
        {"name": "captions convert_unit with Pillow only (no DCT scaling), CPU time (reference)",
         "figure": round(cpu["pil"], 1), "unit": "img/s", "baseline": round(b, 1), "ratio": round(cpu["pil"] / b, 3),
         "target": None},
        {"name": "shard writer alone on converted caption rows (reference)", "figure": round(cpu["wonly"], 1),
         "unit": "img/s", "baseline": round(b, 1), "ratio": round(cpu["wonly"] / b, 3), "target": None},
    ]
    print(f"baseline PIL decode+resize({SIZE})+patchify: {b:.0f} img/s CPU, {wall['base']:.0f} img/s wall "
          f"({n} JPEGs 256x256, best of {repeats})")
    for r, k, kb in zip(rows, ("conv", "writ", "conv_large"), ("base", "base", "base_large")):
        ok = "ok" if r["ratio"] >= r["target"] else "BELOW TARGET"
        print(f"{r['name']}: {r['figure']:.0f} {r['unit']} vs baseline {r['baseline']:.0f}, ratio {r['ratio']:.2f} "
              f"(target >= {r['target']}) {ok}; wall {wall[k]:.0f} vs {wall[kb]:.0f} img/s, ratio {wall[k] / wall[kb]:.2f}")
    for r in info:
        print(f"{r['name']}: {r['figure']:.0f} {r['unit']} vs baseline {r['baseline']:.0f}, ratio {r['ratio']:.2f}")
    us = {k: 1e6 / v for k, v in cpu.items()}
    print(f"per image (CPU): baseline {us['base']:.0f} us; converter {us['conv']:.0f} us; converter + writer "
          f"{us['writ']:.0f} us, of which the writer {us['writ'] - us['conv']:.0f} us "
          f"({(us['writ'] - us['conv']) / us['writ']:.0%}); writer alone on ready rows {us['wonly']:.0f} us")
    return rows + info


if __name__ == "__main__":
    main()
