"""Run a real CLI on hostile data and check the promises of issue 20: an exit code of 0, 1 or 2,
one line (no traceback), memory under a bound (RLIMIT_AS in the child), and nothing written
outside the working folders (HOME, caches and TMPDIR all point into a sandbox whose siblings are
compared before and after)."""

from __future__ import annotations

import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.cli_outcome import Outcome, env

GiB = 1 << 30


@dataclass
class Run(Outcome):
    """An Outcome of any module's CLI (argv starts with the module)."""

    def __str__(self) -> str:
        return f"{' '.join(self.argv)} -> exit {self.code}\n{self.err[-3000:]}"

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip() and not ln.startswith("gato-kit: ")]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """{path: (size, mtime_ns)} of every file and link under root."""
    out = {}
    for p in root.rglob("*"):
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def run(module: str, argv: list[str], sandbox: Path, mem: int = 3 * GiB, timeout: float = 180,
        fsize: int | None = None, **extra_env: str) -> Run:
    """`python -m module argv` with HOME, XDG_CACHE_HOME and TMPDIR inside `sandbox`, and its
    address space capped at `mem` bytes (and, with `fsize`, every file it writes at that many
    bytes: a write past it fails with EFBIG, as on a full disk)."""
    for d in ("home", "cache", "tmp"):
        (sandbox / d).mkdir(parents=True, exist_ok=True)
    child_env = env(HOME=str(sandbox / "home"), XDG_CACHE_HOME=str(sandbox / "cache"), TMPDIR=str(sandbox / "tmp"),
                    GATO_KIT_INPUT_CACHE=str(sandbox / "cache" / "inputs"),
                    GATO_KIT_CACHE=str(sandbox / "cache" / "gato-kit"), **extra_env)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        if fsize is not None:
            import signal
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    cmd = [sys.executable, "-c", argv[0], *argv[1:]] if module == "-c" else [sys.executable, "-m", module, *argv]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env=child_env, cwd=sandbox, preexec_fn=limit)
    return Run([module, *argv], p.returncode, p.stderr)


def check_one_line(r: Run, code: int, *needles: str) -> str:
    """Exit `code`, no traceback, no MemoryError, one error line (after argparse's usage on 2)
    containing every needle; returns that line."""
    assert r.code == code, str(r)
    assert "Traceback" not in r.err and "MemoryError" not in r.err, str(r)
    lines = r.lines
    if code == 2:
        lines = [ln for ln in lines if not ln.startswith(("usage:", " "))]
    assert len(lines) == 1, str(r)
    for n in needles:
        assert n in lines[0], str(r)
    return lines[0]
