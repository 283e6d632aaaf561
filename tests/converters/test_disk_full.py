"""A full disk during conversion: exit 1 with one line, no temporary files, never shards without a
manifest, whatever the writer was doing when space ran out. Written against the CLI's observable
behaviour, so it holds for any writer.

Really full: a small tmpfs mounted for the test (needs root; skipped with the reason where the
mount fails). Elsewhere the kernel's file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) makes
writes past a size fail with EFBIG, the same OSError path as ENOSPC.
"""

from __future__ import annotations

import json
import random
import resource
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.cli_outcome import check_message, check_out, run_cli

pytestmark = pytest.mark.slow
WORDS = ("alpha", "beta", "gamma", "delta", "quick", "brown", "fox", "lazy", "dog", "river")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """About 1.2 MB of shards once converted (800 documents of 60 words)."""
    rng = random.Random(0)
    p = tmp_path_factory.mktemp("disk-full") / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(60))}) + "\n"
                         for _ in range(800)))
    return p


@pytest.fixture
def tmpfs(tmp_path):
    """A function mounting a tmpfs of a given size at a fresh directory (unmounted afterwards)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        d = tmp_path / f"fs-{size}"
        d.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True,
                           text=True)
        if p.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({(p.stderr or p.stdout).strip()[:200]})")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _convert(corpus: Path, model: str, out: Path, preexec=None):
    return run_cli(["text", str(corpus), "--text-tokenizer", model, "--out", str(out), "--no-progress",
                    "--shard-size", "200KB"], preexec=preexec)


@pytest.mark.parametrize("size", ["64k", "300k", "700k", "1100k", "1300k", "1500k", "8m"])
def test_conversion_onto_a_full_tmpfs(corpus, sp_model_path, tmpfs, size):
    fs = tmpfs(size)
    out = fs / "out"
    o = _convert(corpus, sp_model_path, out)
    check_message(o)
    check_out(o, out)
    if o.code == 1:
        assert "No space left on device" in o.err, str(o)
    if size == "8m":
        assert o.code == 0, str(o)


def _file_size_limit(limit: int):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


@pytest.mark.parametrize("limit", [4_000, 150_000, 210_000])
def test_conversion_when_writes_fail_part_way(corpus, sp_model_path, tmp_path, limit):
    out = tmp_path / "out"
    o = _convert(corpus, sp_model_path, out, preexec=_file_size_limit(limit))
    check_message(o)
    check_out(o, out)
    assert o.code == 1 and "File too large" in o.err, str(o)
