"""Evaluation results and their report: each task's returns against random and expert play, the
expert-normalised scores with rliable's intervals and aggregates over runs (trainer/acting/scores.py),
`eval.json`, the summary table and `eval.png`; several eval.json files combined."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tokenizer_kit.files import atomic_path

from .scores import aggregates, task_interval

EVAL_JSON, EVAL_PNG = "eval.json", "eval.png"


@dataclass
class TaskResult:
    name: str
    env: str
    agent: list[float]
    random: list[float]
    expert: list[float]  # the demonstrations' returns over the same horizon
    expert_exact: bool  # False: demonstrations longer than the horizon, their returns scaled to it
    horizon: int | None
    agent_steps: list[int] = field(default_factory=list)
    success: float | None = None
    seeds: list[int] = field(default_factory=list)  # reset seed of each agent (and random) episode

    def normalised(self) -> np.ndarray:
        """Per-episode (agent - random) / (expert - random), with the two baselines' means."""
        lo, hi = float(np.mean(self.random)), float(np.mean(self.expert))
        gap = hi - lo if abs(hi - lo) > 1e-9 else 1e-9
        return (np.asarray(self.agent, np.float64) - lo) / gap

    @property
    def score(self) -> float:
        return float(self.normalised().mean())

    def success_rates(self) -> dict | None:
        if self.success is None:
            return None
        return {k: float(np.mean(np.asarray(getattr(self, k)) > self.success)) for k in ("agent", "random", "expert")}


def score_matrix(runs: list[list[TaskResult]]) -> np.ndarray:
    """(runs x tasks) normalised scores; every run must hold the same tasks in the same order."""
    names = [r.name for r in runs[0]]
    for i, run in enumerate(runs[1:], 1):
        if [r.name for r in run] != names:
            raise ValueError(f"run {i} has tasks {[r.name for r in run]}, run 0 {names}: "
                             "aggregates need the same tasks")
    return np.asarray([[r.score for r in run] for run in runs], np.float64)


def build_report(runs: list[list[TaskResult]], names: list[str], seed: int = 0, reps: int = 2000) -> dict:
    """eval.json: per task (the first run's results, every run's score, the task's interval),
    every run's results, and the aggregates over runs."""
    scores = score_matrix(runs)
    overall = aggregates(scores, reps, seed).to_dict()
    overall["episodes"] = int(sum(len(r.agent) for run in runs for r in run))
    tasks = []
    for j, r in enumerate(runs[0]):
        ci, over = task_interval(scores[:, j], [run[j].normalised() for run in runs], reps, seed + j)
        tasks.append(asdict(r) | {"score": float(scores[:, j].mean()), "run_scores": scores[:, j].tolist(),
                                  "ci": ci, "ci_over": over, "success_rates": r.success_rates()})
    return {"runs": names, "tasks": tasks, "overall": overall,
            "results": [[asdict(r) for r in run] for run in runs]}


def results_from_report(report: dict, path: str) -> list[list[TaskResult]]:
    """The TaskResults of every run an eval.json holds."""
    known = set(TaskResult.__dataclass_fields__)
    try:
        runs = report.get("results") or [report["tasks"]]
        return [[TaskResult(**{k: v for k, v in t.items() if k in known}) for t in run] for run in runs]
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not an eval.json of gato-train eval ({e})") from None


def summary_lines(report: dict) -> list[str]:
    def f(x) -> str:
        x = np.asarray(x, np.float64)
        return f"{x.mean():9.1f} +/- {x.std():6.1f}"

    runs = len(report["runs"])
    lines = [f"{'task':<24}{'horizon':>8}{'agent':>20}{'random':>20}{'expert':>20}{'score':>8}{'95% CI':>16}"]
    for r in report["tasks"]:
        star = "" if r["expert_exact"] else "~"
        ci = f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"
        lines.append(f"{r['name']:<24}{str(r['horizon'] or '-'):>8}{f(r['agent']):>20}{f(r['random']):>20}"
                     f"{star + f(r['expert']).strip():>20}{r['score']:>8.2f}{ci:>16}")
        rates = r["success_rates"]
        if rates:
            lines.append(f"{'':<24}{'success':>8}{rates['agent']:>20.0%}{rates['random']:>20.0%}{rates['expert']:>20.0%}")
    if any(not r["expert_exact"] for r in report["tasks"]):
        lines.append("~ demonstrations longer than the horizon: their returns scaled to it")
    over = report["tasks"][0]["ci_over"] if report["tasks"] else "episodes"
    lines.append(f"score: (agent - random) / (expert - random); a task's CI over its {over}; "
                 "seeds per task in eval.json")
    ov = report["overall"]
    lines.append(f"normalised score over {ov['tasks']} task(s), {runs} run(s), {ov['episodes']} episodes: "
                 + ", ".join(f"{label} {ov[k]:.2f} [{ov[k + '_ci'][0]:.2f}, {ov[k + '_ci'][1]:.2f}]"
                             for k, label in (("mean", "mean"), ("median", "median"), ("iqm", "IQM"),
                                              ("optimality_gap", "optimality gap")))
                 + " (95% stratified bootstrap CI over runs" + (": one run, no spread)" if runs == 1 else ")"))
    return lines


def plot_suite(report: dict, path: Path) -> Path:
    """Each task's expert-normalised score with its interval, and the aggregates over tasks with
    theirs: every bar's error bar is the interval the title names."""
    import matplotlib  # noqa: PLC0415 - start-up time: matplotlib loads only to draw
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after matplotlib.use

    ov = report["overall"]
    keys = (("mean", "mean"), ("median", "median"), ("iqm", "IQM"), ("optimality_gap", "opt. gap"))
    names = [t["name"] for t in report["tasks"]] + [label for _, label in keys]
    values = [t["score"] for t in report["tasks"]] + [ov[k] for k, _ in keys]
    cis = [t["ci"] for t in report["tasks"]] + [ov[k + "_ci"] for k, _ in keys]
    errs = [[max(0.0, v - c[0]) for v, c in zip(values, cis)], [max(0.0, c[1] - v) for v, c in zip(values, cis)]]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names)), 4))
    n = len(report["tasks"])
    ax.bar(names, values, yerr=errs, color=["tab:blue"] * n + ["tab:gray"] * len(keys), capsize=4)
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="expert")
    ax.axhline(0.0, color="r", lw=0.8, ls=":", label="random")
    ax.set_ylabel("(agent - random) / (expert - random)")
    over = report["tasks"][0]["ci_over"] if n else "runs"
    ax.set_title(f"expert-normalised score, {len(report['runs'])} run(s): 95% stratified bootstrap CIs\n"
                 f"(tasks: over {over}; aggregates: over runs)", fontsize=9)
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def write_report(report: dict, out: Path | None) -> dict:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / EVAL_JSON) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1) + "\n")
        plot_suite(report, out / EVAL_PNG)
    report["lines"] = summary_lines(report)
    return report


def combine_reports(paths: list[str], out: Path | None, seed: int = 0) -> dict:
    """The aggregates over every run of several eval.json files (one per training seed, say)."""
    runs, names = [], []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable eval.json ({str(e).splitlines()[0]})") from None
        if not isinstance(report, dict):
            raise ValueError(f"{path}: not an eval.json of gato-train eval (not a JSON object)")
        got = results_from_report(report, path)
        recorded = report.get("runs")
        given = recorded if isinstance(recorded, list) else []
        runs += got
        names += [str(given[i]) if i < len(given) else f"{path}#{i}" for i in range(len(got))]
    return write_report(build_report(runs, names, seed), out)
