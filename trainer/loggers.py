"""Where a run's metric records go: RUN/metrics.jsonl always, TensorBoard and W&B when asked.

metrics.jsonl is the run's own record (the plot, the summary and a resume read it). TensorBoard
event files go to RUN/tb (torch's SummaryWriter; a resumed run purges the events its crashed
attempt wrote after the checkpoint). W&B is optional (`pip install 'gato-kit[wandb]'`), offline
unless WANDB_MODE says otherwise, its files under RUN/wandb, and a resume continues the same W&B
run (its id is kept in config.json).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

TB_DIR = "tb"
METRICS_NAME = "metrics.jsonl"


def _scalars(rec: dict) -> dict[str, float]:
    """The numeric fields of a record (None and non-finite values left out)."""
    return {k: float(v) for k, v in rec.items() if k != "step" and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


class MetricLog:
    """One record per log step, to every logger of the run (rank 0 only)."""

    def __init__(self, out: Path, kinds: list[str], start_step: int, config: dict, wandb_id: str | None):
        self.out, self.tb, self.wandb = out, None, None
        if "tensorboard" in kinds:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - start-up time; installed: checked by the Trainer
            # purge_step: TensorBoard drops events at or after it that an earlier attempt wrote
            self.tb = SummaryWriter(str(out / TB_DIR), purge_step=start_step + 1 if start_step else None)
        if "wandb" in kinds:
            import wandb  # noqa: PLC0415 - optional extra [wandb]
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "gato-kit"), id=wandb_id,
                                    resume="allow", dir=str(out), config=config,
                                    mode=os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
                                    settings=wandb.Settings(console="off", quiet=True))

    def write(self, rec: dict) -> None:
        with open(self.out / METRICS_NAME, "a") as f:
            f.write(json.dumps(rec) + "\n")
        step = int(rec["step"])
        if self.tb is not None:
            for k, v in _scalars(rec).items():
                self.tb.add_scalar(k, v, step, walltime=rec.get("time"))
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(_scalars(rec), step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
