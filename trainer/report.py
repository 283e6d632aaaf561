"""What a training run tells its user: the loss plot (one line per task) and the closing summary.

Both read RUN/metrics.jsonl, the one record of the run, so they describe a resumed run whole.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizer_kit.errors import first_line
from tokenizer_kit.files import atomic_path


class MetricsError(ValueError):
    """A metrics.jsonl line that is not a record, other than a last line cut off by a crash."""


def read_metrics(metrics: Path) -> list[dict]:
    """The records of metrics.jsonl. A last line cut off mid-write (a crash, a full disk) is left
    out: its step is logged again after resume. Any other bad line is a MetricsError naming it."""
    if not metrics.is_file():
        return []
    try:
        text = metrics.read_text()
    except (OSError, ValueError) as e:
        raise MetricsError(f"{metrics}: unreadable ({first_line(e)})") from None
    lines = text.splitlines()
    out = []
    for i, ln in enumerate(lines):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except (ValueError, RecursionError):
            rec = None
        if not isinstance(rec, dict) or not isinstance(rec.get("step", 0), int):
            if i == len(lines) - 1 and not text.endswith("\n"):
                break  # the line a crash cut off
            raise MetricsError(f"{metrics}: line {i + 1} is not a metrics record")
        out.append(rec)
    return out


def plot_metrics(metrics: Path, out: Path) -> Path | None:
    """Loss per task against step, log scale (the mixed loss alone hides the tasks: text targets
    outnumber action targets in any batch holding a document), the mixed training loss, and eval
    losses as dots. A PNG via matplotlib's Agg backend, written atomically."""
    recs = [r for r in read_metrics(metrics) if r.get("loss") is not None]  # steps without targets: no loss
    if not recs:
        return None
    import matplotlib  # noqa: PLC0415 - start-up time: matplotlib loads only to draw
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - start-up time: matplotlib loads only to draw

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], color="k", lw=1.5, alpha=0.5, label="train (all)")
    tasks = sorted({k[5:] for r in recs for k in r if k.startswith("loss/")})
    for name in tasks:
        pts = [(r["step"], r["loss/" + name]) for r in recs if "loss/" + name in r]
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, label=name)
        ev = [(r["step"], r["eval_loss/" + name]) for r in recs if "eval_loss/" + name in r]
        if ev:
            ax.plot([p[0] for p in ev], [p[1] for p in ev], "o", color=line.get_color(), ms=5)
    ev = [(r["step"], r["eval_loss"]) for r in recs if "eval_loss" in r]
    if ev:
        ax.plot([p[0] for p in ev], [p[1] for p in ev], "ko", ms=6, label="eval (dots)")
    if all(r["loss"] > 0 for r in recs):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy per target token")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out


def window_losses(recs: list[dict], tasks: list[str]) -> tuple[float | None, dict[str, float | None]]:
    """The mean loss over every target of one record's log window, and each task's over the same
    window: the per-task losses weighted by their target counts (`target_tokens/TASK`), so the
    overall number is the per-task numbers' own mix, never a different span of steps."""
    rec = recs[-1]
    per = {t: rec.get("loss/" + t) for t in tasks}
    counts = {t: rec.get("target_tokens/" + t, 0) for t in tasks}
    total = sum(counts[t] for t in tasks if per[t] is not None)
    overall = sum(per[t] * counts[t] for t in tasks if per[t] is not None) / total if total else rec.get("loss")
    return overall, per


def summary(metrics: Path, checkpoint: Path, tasks: list[str]) -> str:
    """Steps, tokens seen, the train loss over the last log window (overall and per task, the same
    steps), the last eval loss per task, and where the checkpoint is."""
    every = read_metrics(metrics)
    recs = [r for r in every if r.get("loss") is not None]  # steps without targets have no loss
    if not recs:
        return f"gato-train: done; checkpoint {checkpoint}"
    last = recs[-1]
    before = [r["step"] for r in every if r["step"] < last["step"]]
    first = (before[-1] if before else 0) + 1
    tokens = sum(r.get("tokens", 0.0) for r in every)
    overall, per = window_losses(recs, tasks)
    lines = [f"gato-train: {last['step']} steps, {tokens / 1e6:.2f} M tokens, final loss {overall:.4f} "
             f"(steps {first}-{last['step']})"
             + (f", eval loss {last['eval_loss']:.4f}" if "eval_loss" in last else "")]
    width = max([len(t) for t in tasks] + [4])
    lines.append(f"  {'task':<{width}}  {'train loss':>10}  {'eval loss':>10}")
    for t in tasks:
        train = per[t]
        ev = next((r["eval_loss/" + t] for r in reversed(recs) if "eval_loss/" + t in r), None)
        lines.append(f"  {t:<{width}}  {'-' if train is None else f'{train:.4f}':>10}  "
                     f"{'-' if ev is None else f'{ev:.4f}':>10}")
    lines.append(f"  checkpoint: {checkpoint}")
    return "\n".join(lines)
