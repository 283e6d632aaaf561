"""What every gato-tokenize run must leave, whatever its input or fault: shared by the fuzz and
disk-full tests, which run the real CLI as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Top-level names a failed conversion may leave in OUT: its work directory, the writer's lock, and
# the shards of finished work units (each vouched for by its marker in the work directory).
RESUME_STATE = (".work",)


@dataclass
class Outcome:
    argv: list[str]
    code: int
    err: str

    def __str__(self) -> str:
        return f"gato-tokenize {' '.join(self.argv)} -> exit {self.code}\n{self.err[-3000:]}"


def env(**extra: str) -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1",
         "OMP_NUM_THREADS": "1", **extra}
    return e


def run_cli(argv: list[str], timeout: float = 120, preexec=None, **extra_env: str) -> Outcome:
    p = subprocess.run([sys.executable, "-m", "converters.cli", *argv], capture_output=True, text=True,
                       timeout=timeout, env=env(**extra_env), cwd=REPO, preexec_fn=preexec)
    return Outcome(argv, p.returncode, p.stderr)


def check_message(o: Outcome) -> None:
    """Exit 0, 1 or 2; never a traceback; on 1 one line, on 2 argparse's usage and one error line."""
    assert o.code in (0, 1, 2), str(o)
    assert "Traceback" not in o.err, str(o)
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    if o.code == 1:
        assert len(lines) == 1, str(o)
    elif o.code == 2:
        assert lines and ": error: " in lines[-1] and sum(": error: " in ln for ln in lines) == 1, str(o)


def _temporaries(directory: Path) -> list[str]:
    return [str(p) for p in directory.rglob("*") if ".tmp" in p.name and ".work" not in p.parts]


def check_out(o: Outcome, out: Path) -> None:
    """Success: a manifest whose shards are all there, no temporaries, no work directory. Failure:
    nothing in OUT but resume state (never shards without a manifest)."""
    if not out.exists():
        assert o.code != 0, str(o)
        return
    names = sorted(os.listdir(out))
    if o.code == 0:
        manifest = json.loads((out / "manifest.json").read_text())
        for shard in manifest["shards"]:
            size = (out / shard["name"]).stat().st_size
            assert size == shard.get("bytes", size), str(o)
        assert not _temporaries(out) and ".work" not in names and not any(n.startswith(".lock") for n in names), \
            f"{o}\n{names}"
        return
    vouched = {s["name"]: s["bytes"] for marker in (out / ".work").glob("unit-*.json")
               for s in json.loads(marker.read_text())["shards"]}
    for name, size in vouched.items():  # a marker vouches only for complete shards
        assert (out / name).stat().st_size == size, f"{o}\n{name} is not the shard its marker lists"
    extra = [n for n in names if n not in RESUME_STATE and not n.startswith(".lock") and n not in vouched]
    assert not extra, f"{o}\nleft in OUT besides resume state: {extra}"
