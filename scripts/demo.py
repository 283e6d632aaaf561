"""`make demo`: the whole pipeline on real data made on the spot, sized for a 2-core CPU.

1. data      expert episodes of CartPole-v1 and Pendulum-v1 (scripted controllers) as Minari
             datasets, and of BabyAI GoToObj (minigrid's BabyAIBot; grid image + text mission) as
             a Parquet episode table; of MiniGrid-Empty-Random-6x6 seen through its RGB view
             (scripts/demo_pixels.py; --no-pixels leaves it out) into Minari; scikit-learn's
             handwritten digits as a WebDataset tar (some held out); standard-library docstrings
             as a text corpus
2. tokenise  a ~1,000-piece SentencePiece model (`gato-tokenize train-tokenizer`), then
             `gato-tokenize rl|captions|text` (the layout follows the tokenizer); one row inspected
3. train     one `tiny` Gato model on the mixture of the six directories (`gato-train`)
4. act       `gato-train eval` on a suite of the four control tasks: agent, random policy and
             expert returns, expert-normalised scores
5. caption   held-out digit images; print a table, write the loss plot

Everything lands under --out (default demo_out/); re-running starts afresh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = ".gato-demo"

CONTROL_TASKS = ("CartPole-v1", "Pendulum-v1")
BABYAI = "demo_envs:GatoDemo/BabyAI-GoToObj-v0"  # scripts/demo_envs.py registers it


@dataclass
class Size:
    """How big each part of the demo is; `quick` is what tests/test_demo.py runs."""

    episodes: dict  # expert episodes per env (and "babyai")
    noise: dict  # exploration noise of the expert per env
    digits_held_out: int
    text_chars: int
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    weights: dict  # mixture weight (tokens) per directory
    eval_episodes: int
    caption_eval: int  # held-out digits captioned
    perturb: float = 0.0  # Pendulum: per-step chance of a DART perturbation burst (demo_data.record_expert)
    pixels: int = 0  # expert episodes of the pixel task (scripts/demo_pixels.py); 0 (--no-pixels): no pixel task
    action_noise: float = 0.0  # gato-train --action-noise: continuous action inputs replaced (copycat guard)


FULL = Size(episodes={"CartPole-v1": 40, "Pendulum-v1": 160, "babyai": 3000},
            noise={"CartPole-v1": 0.1, "Pendulum-v1": 0.0},
            digits_held_out=297, text_chars=300_000, steps=3600, batch_size=16, seq_len=64, lr=3e-3,
            weights={"cartpole": 0.18, "pendulum": 0.6, "babyai": 0.1, "digits": 0.06, "text": 0.02, "pixels": 0.04},
            eval_episodes=20, caption_eval=297, perturb=0.03, action_noise=0.3, pixels=400)
QUICK = Size(episodes={"CartPole-v1": 12, "Pendulum-v1": 20, "babyai": 300},
             noise={"CartPole-v1": 0.1, "Pendulum-v1": 0.0},
             digits_held_out=100, text_chars=50_000, steps=300, batch_size=16, seq_len=64, lr=3e-3,
             weights={"cartpole": 0.5, "pendulum": 0.2, "babyai": 0.15, "digits": 0.1, "text": 0.05, "pixels": 0.05},
             eval_episodes=4, caption_eval=100, perturb=0.03, action_noise=0.3, pixels=100)


def log(msg: str) -> None:
    print(msg, flush=True)


def run_cli(args: list[str], what: str, progress: bool = False) -> str:
    """Run one of the toolkit's commands as a user would; stop the demo with its message if it fails.
    With `progress`, its stderr (the progress bar) goes to the terminal as it runs."""
    t = time.time()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=None if progress else subprocess.PIPE, text=True,
                          env=os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'scripts'}"})
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + (proc.stderr or ""))
        raise SystemExit(f"demo: {what} failed (exit {proc.returncode})")
    log(f"    {what}: {time.time() - t:.1f} s")
    return proc.stdout + (proc.stderr or "")


def idle_cores() -> int:
    """Cores not busy with other work. On a shared machine, more threads than idle cores make
    PyTorch's small kernels wait on descheduled threads: measured here 3-7x slower than 1 thread."""
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(os.cpu_count() or 1, int((os.cpu_count() or 1) - busy + 0.5)))


def prepare_out(out: Path) -> None:
    """A fresh output directory; refuse to wipe one the demo did not make."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise SystemExit(f"demo: {out} exists and is not a demo output directory; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by scripts/demo.py; deleted when the demo runs again\n")


def make_data(out: Path, size: Size, seed: int) -> dict:
    import numpy as np

    import demo_data as dd

    info: dict = {"returns": {}}
    for env_id in CONTROL_TASKS:
        t = time.time()
        buffers, returns = dd.record_expert(env_id, size.episodes[env_id], seed=seed, noise=size.noise[env_id],
                                            wide_starts=0.5 if env_id == "Pendulum-v1" else 0.0,
                                            perturb=size.perturb if env_id == "Pendulum-v1" else 0.0)
        name = env_id.split("-")[0].lower()
        path = dd.write_minari(f"demo/{name}-expert-v0", env_id, buffers)
        info["returns"][env_id] = returns
        info[name] = path
        log(f"    {env_id}: {len(buffers)} expert episodes, return {returns.mean():.1f} +/- {returns.std():.1f} "
            f"-> {path.relative_to(out)} ({time.time() - t:.1f} s)")
    t = time.time()
    cols, returns = dd.record_babyai(size.episodes["babyai"], seed=seed)
    info["babyai"] = dd.write_episode_table(out / "raw" / "babyai.parquet", cols)
    if size.pixels:
        info["pixels"] = record_pixels(size.pixels, seed, info)
    info["returns"]["babyai"] = returns
    info["missions"] = sorted({m for ep in cols["obs/mission"] for m in ep})
    log(f"    BabyAI GoToObj: {len(returns)} BabyAIBot episodes, success {np.mean(returns > 0):.0%}, "
        f"{np.mean([len(a) for a in cols['action']]):.1f} steps on average -> raw/babyai.parquet "
        f"({time.time() - t:.1f} s)")
    images, labels = dd.digit_images(16)
    train_idx, held_idx = dd.split_digits(len(images), size.digits_held_out, seed)
    info["digits"] = dd.write_digits_tar(out / "raw" / "digits.tar", images[train_idx], labels[train_idx], train_idx)
    np.savez(out / "raw" / "digits_held_out.npz", images=images[held_idx], labels=labels[held_idx], index=held_idx)
    info["held_out"] = (images[held_idx], labels[held_idx])
    log(f"    digits: {len(train_idx)} captioned 16x16 images -> raw/digits.tar, {len(held_idx)} held out")
    info["text"] = dd.write_text_corpus(out / "raw" / "text.txt", size.text_chars)
    # the captions' words are text too: the tokenizer is trained on both
    info["captions_txt"] = out / "raw" / "captions.txt"
    info["captions_txt"].write_text("\n".join(dd.caption(i) for i in range(10)) * 20 + "\n"
                                    + "\n".join(info["missions"]) * 5 + "\n")
    log(f"    text: {info['text'].stat().st_size // 1000} kB of standard-library docstrings -> raw/text.txt")
    return info


def record_pixels(episodes: int, seed: int, info: dict) -> Path:
    """The pixel task's expert episodes, recorded through its RGB view into Minari."""
    import minari
    import numpy as np
    from minari.storage.datasets_root_dir import get_dataset_path

    import demo_pixels as dp

    t = time.time()
    buffers, returns, env = dp.record(episodes, seed)
    minari.create_dataset_from_buffers("demo/minigrid-pixels-v0", buffers, env=env, algorithm_name="BFS expert")
    env.close()
    info["returns"][dp.ENV_ID] = returns
    log(f"    {dp.ENV_ID} (RGB view, 24x24 pixels): {episodes} expert episodes, success {np.mean(returns > 0):.0%}, "
        f"{np.mean([len(b.actions) for b in buffers]):.1f} steps on average ({time.time() - t:.1f} s)")
    return Path(get_dataset_path("demo/minigrid-pixels-v0"))


def tokenise(out: Path, data: dict) -> dict:
    shards = out / "shards"
    spm = out / "tokenizer.model"
    run_cli(["-m", "converters.cli", "train-tokenizer", str(data["text"]), str(data["captions_txt"]),
             "--vocab-size", "1000", "--out", str(spm)], "gato-tokenize train-tokenizer (1,000 pieces)")
    common = ["--text-tokenizer", str(spm), "--no-progress"]
    dirs = {"cartpole": shards / "cartpole", "pendulum": shards / "pendulum", "babyai": shards / "babyai",
            "digits": shards / "digits", "text": shards / "text"}
    run_cli(["-m", "converters.cli", "rl", str(data["cartpole"]), "--out", str(dirs["cartpole"]), *common],
            "gato-tokenize rl CartPole-v1")
    run_cli(["-m", "converters.cli", "rl", str(data["pendulum"]), "--out", str(dirs["pendulum"]), *common],
            "gato-tokenize rl Pendulum-v1")
    # --repeated-text-loss: the mission at every step stays a target, as in the runs the README's
    # table comes from (the converter's default now trains on its first occurrence only)
    run_cli(["-m", "converters.cli", "rl", str(data["babyai"]), "--out", str(dirs["babyai"]), *common,
             "--repeated-text-loss"],
            "gato-tokenize rl BabyAI (Parquet episode table)")
    if "pixels" in data:
        import demo_pixels as dp
        dirs["pixels"] = shards / "pixels"
        run_cli(["-m", "converters.cli", "rl", str(data["pixels"]), "--out", str(dirs["pixels"]), *common,
                 "--image-size", "32x32", "--env-spec", json.dumps(dp.ENV_SPEC)],
                "gato-tokenize rl MiniGrid RGB view (Minari, --env-spec)")
    run_cli(["-m", "converters.cli", "captions", str(data["digits"]), "--image-size", "16",
             "--out", str(dirs["digits"]), *common], "gato-tokenize captions digits")
    run_cli(["-m", "converters.cli", "text", str(data["text"]), "--out", str(dirs["text"]), *common],
            "gato-tokenize text")
    shown = run_cli(["-m", "converters.cli", "inspect", str(dirs["cartpole"]), "--row", "0"],
                    "gato-tokenize inspect shards/cartpole --row 0")
    lines = shown.splitlines()
    log("\n".join("      " + ln for ln in lines[:24]) + ("\n      ..." if len(lines) > 24 else ""))
    return dirs


def train(out: Path, dirs: dict, size: Size, seed: int) -> Path:
    run = out / "run"
    data = [f"{dirs[k]}:{w}" for k, w in size.weights.items() if k in dirs]
    run_cli(["-m", "trainer.cli", "--data", *data, "--out", str(run), "--preset", "tiny",
             "--steps", str(size.steps), "--batch-size", str(size.batch_size), "--seq-len", str(size.seq_len),
             "--lr", str(size.lr), "--action-noise", str(size.action_noise), "--seed", str(seed),
             "--log-every", "10", "--save-every", str(size.steps)],
            f"gato-train tiny, {size.steps} steps of {size.batch_size}x{size.seq_len} tokens", progress=True)
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    log(f"    loss {recs[0]['loss']:.3f} (step {recs[0]['step']}) -> {recs[-1]['loss']:.3f} (step {recs[-1]['step']})")
    return run


def evaluate_control(run: Path, dirs: dict, size: Size, seed: int, data: dict, out: Path) -> list[dict]:
    """`gato-train eval` on a suite of the control tasks (the pixel task too unless --no-pixels);
    its eval.json gives the table."""
    import numpy as np

    pendulum = np.asarray(data["returns"]["Pendulum-v1"])
    # the expert's own return: its episodes without DART perturbation bursts (every other one)
    expert = float(pendulum[0::2].mean() if size.perturb > 0 else pendulum.mean())
    # held-out start states: each task names the seeds its demonstrations were recorded on (episode i
    # from seed + i), and gato-train eval refuses to start an episode from one of them
    recorded = {k: f"{seed}-{seed + n - 1}" for k, n in size.episodes.items()}
    suite = {"tasks": [
        {"env": "CartPole-v1", "data": str(dirs["cartpole"]), "episodes": size.eval_episodes,
         "recorded_seeds": recorded["CartPole-v1"]},
        {"env": "Pendulum-v1", "data": str(dirs["pendulum"]), "episodes": size.eval_episodes,
         "rescale_actions": True, "expert_return": expert, "recorded_seeds": recorded["Pendulum-v1"]},
        {"env": BABYAI, "name": "BabyAI-GoToObj", "data": str(dirs["babyai"]), "episodes": 5 * size.eval_episodes,
         "success": 0.0, "recorded_seeds": recorded["babyai"], "seed": seed + 1000 + size.episodes["babyai"]}]}
    if "pixels" in dirs:  # its recorded seeds are in the manifest (Minari keeps them)
        import demo_pixels as dp
        suite["tasks"].append({"env": dp.ENV_ID, "name": "MiniGrid-pixels", "data": str(dirs["pixels"]),
                               "episodes": 5 * size.eval_episodes, "success": 0.0, "seed": seed + 1000 + size.pixels})
    import yaml
    (out / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    shown = run_cli(["-m", "trainer.cli", "eval", "--checkpoint", str(run), "--suite", str(out / "suite.yaml"),
                     "--out", str(out), "--seed", str(seed + 1000), "--threads", "1"],
                    "gato-train eval --suite suite.yaml", progress=True)
    log("\n".join("      " + ln for ln in shown.splitlines()))
    report = json.loads((out / "eval.json").read_text())
    rows = []
    for r in report["tasks"]:
        demos = np.asarray(data["returns"]["babyai" if r["env"] == BABYAI else r["env"]])  # pixels: its env id
        rows.append({"task": r["name"], "demonstrations": demos, "expert": np.asarray(r["expert"]),
                     "agent": np.asarray(r["agent"]), "random": np.asarray(r["random"]), "score": r["score"],
                     "success": r["success_rates"], "ci": r["ci"], "seeds": r["seeds"]})
    return rows


def evaluate_captions(run: Path, dirs: dict, size: Size, held_out) -> dict:
    import numpy as np

    import demo_data as dd
    from tokenizer_kit.text import TextTokenizer
    from trainer.checkpoint import load_model
    from trainer.acting.decoding import generate_text
    from tokenizer_kit.text_rows import caption_context

    t = time.time()
    model, layout, _ = load_model(run)
    tok = TextTokenizer(dirs["digits"] / "tokenizer.model")
    images, labels = held_out[0][:size.caption_eval], held_out[1][:size.caption_eval]
    contexts = [caption_context(im, layout, "resize", (16, 16)) for im in images]
    captions = []
    for i in range(0, len(contexts), 64):
        captions += [tok.decode(ids) for ids in generate_text(model, layout, contexts[i:i + 64], max_new_tokens=14)]
    predicted = np.array([dd.caption_digit(c) if dd.caption_digit(c) is not None else -1 for c in captions])
    acc = float(np.mean(predicted == labels))
    log(f"    {len(images)} held-out digits captioned ({time.time() - t:.1f} s); e.g. "
        + "; ".join(f"[{int(l)}] {c!r}" for l, c in list(zip(labels, captions))[:4]))
    return {"accuracy": acc, "n": len(images), "examples": list(zip(labels.tolist()[:10], captions[:10]))}


def fmt(x) -> str:
    import numpy as np
    x = np.asarray(x, dtype=np.float64)
    return f"{x.mean():8.1f} +/- {x.std():6.1f}"


def table(control: list[dict], captions: dict) -> str:
    import numpy as np
    lines = [f"{'task':<16}{'demonstrations':>22}{'agent':>22}{'random policy':>22}{'score*':>9}{'95% CI':>16}",
             "-" * 107]
    for r in control:
        ci = f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"
        lines.append(f"{r['task']:<16}{fmt(r['demonstrations']):>22}{fmt(r['agent']):>22}{fmt(r['random']):>22}"
                     f"{r['score']:>9.2f}{ci:>16}")
        if r["success"]:
            s = r["success"]
            lines.append(f"{'  success':<16}{s['expert']:>22.0%}{s['agent']:>22.0%}{s['random']:>22.0%}")
    lines.append(f"{'digit captions':<16}{'held-out accuracy':>22}{captions['accuracy']:>22.1%}"
                 f"{'chance 10%':>22}{'n=' + str(captions['n']):>9}")
    lines.append("* expert-normalised: (agent - random) / (expert - random), from gato-train eval (eval.json); "
                 "CI: 95% bootstrap over the episodes; held-out start states, seeds "
                 + ", ".join(f"{r['task']} {r['seeds'][0]}-{r['seeds'][-1]}" for r in control))
    for r in control:
        if len(r["expert"]) == 1:
            lines.append(f"  {r['task']} expert = its unperturbed episodes, {float(r['expert'][0]):.1f}; the others "
                         f"had DART perturbation bursts")
    by = {r["task"]: r for r in control}
    checks = []
    if "CartPole-v1" in by:
        c = by["CartPole-v1"]
        checks.append(("CartPole agent >= 95% of the demonstrations' return",
                       np.mean(c["agent"]) >= 0.95 * np.mean(c["demonstrations"])))
    if "Pendulum-v1" in by:
        checks.append(("Pendulum closes >= 90% of the random-expert gap", by["Pendulum-v1"]["score"] >= 0.9))
    if "BabyAI-GoToObj" in by:
        checks.append(("BabyAI succeeds in >= 80% of episodes", by["BabyAI-GoToObj"]["success"]["agent"] >= 0.8))
    if "MiniGrid-pixels" in by:
        checks.append(("MiniGrid pixels succeeds in >= 80% of episodes", by["MiniGrid-pixels"]["success"]["agent"] >= 0.8))
    checks.append(("held-out digit captions >= 95%", captions["accuracy"] >= 0.95))
    lines.append("targets: " + "; ".join(f"{what}: {'met' if ok else 'MISSED'}" for what, ok in checks))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "demo_out"), help="output directory (default demo_out/)")
    p.add_argument("--quick", action="store_true", help="a shortened run (what tests/test_demo.py runs)")
    p.add_argument("--steps", type=int, help="training steps (default 3600, quick 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-pixels", action="store_true",
                   help="leave out the control task with image observations (MiniGrid's RGB view, "
                        "scripts/demo_pixels.py); the other tasks keep their weights")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the thread count changes the order of floating-point sums and "
                        "so the scores; with 1, a seed gives the same run on an idle or a loaded machine (~10 "
                        "steps/s measured on 2 loaded cores, 2 threads ~11.5 on 2 idle ones); 0: the cores the "
                        "load average leaves idle)")
    args = p.parse_args(argv)
    size = QUICK if args.quick else FULL
    if args.steps:
        size = replace(size, steps=args.steps)
    if args.no_pixels:
        size = replace(size, pixels=0, weights={k: w for k, w in size.weights.items() if k != "pixels"})
    out = Path(args.out).resolve()
    prepare_out(out)
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be downloaded
    os.environ["MINARI_DATASETS_PATH"] = str(out / "minari")
    os.environ.setdefault("MPLBACKEND", "Agg")
    threads = args.threads or idle_cores()
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the training subprocess reads it at start
    import torch
    torch.set_num_threads(threads)
    log(f"gato-kit demo -> {out} ({threads} torch thread{'s' if threads > 1 else ''} of {os.cpu_count()} cores)")
    warnings.filterwarnings("ignore")  # minari's metadata advice, gymnasium's float32 notes
    t0 = time.time()
    stages = {}

    def stage(name: str, fn, *a):
        log(f"[{len(stages) + 1}/5] {name}")
        t = time.time()
        result = fn(*a)
        stages[name] = time.time() - t
        return result

    data = stage("data", make_data, out, size, args.seed)
    dirs = stage("tokenise", tokenise, out, data)
    run = stage("train", train, out, dirs, size, args.seed)
    control = stage("act", evaluate_control, run, dirs, size, args.seed, data, out)
    captions = stage("caption", evaluate_captions, run, dirs, size, data["held_out"])
    total = time.time() - t0

    shutil.copyfile(run / "loss.png", out / "loss.png")  # one line per task, drawn by gato-train
    log("")
    log(table(control, captions))
    log("")
    log("time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()) + f"; total {total:.0f} s "
        f"on {os.cpu_count()} cores")
    log(f"loss plot: {out / 'loss.png'}")
    results = {"control": [{k: (v.tolist() if hasattr(v, 'tolist') else v) for k, v in r.items()} for r in control],
               "captions": captions, "seconds": stages | {"total": total}, "size": size.__dict__}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
