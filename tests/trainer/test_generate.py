"""`gato-train generate`: the continuation keeps its word boundary, and a prompt longer than the
model's sequence length is cut to its last tokens (said on stderr) instead of allocating GBs."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.shards import make_text_shard_dir
from tokenizer_kit.text import TextTokenizer
from trainer.cli import main
from trainer.acting.generate import continuation, fit_prompt

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, sp_model_path, corpus_path):
    root = tmp_path_factory.mktemp("generate")
    data = make_text_shard_dir(root / "text", sp_model_path, corpus_path, docs=10)
    run = root / "run"
    assert main(["--data", str(data), "--out", str(run), "--steps", "2", "--batch-size", "2", "--seq-len", "64",
                 "--log-every", "1", "--no-progress"]) == 0
    return run


def test_continuation_keeps_the_space_between_prompt_and_new_words(sp_model_path):
    tok = TextTokenizer(sp_model_path)
    whole = "Return the value of the module"
    ids = np.asarray(tok.encode(whole), np.int32)
    head = np.asarray(tok.encode("Return the"), np.int32)
    assert np.array_equal(ids[:len(head)], head)  # the split falls on a piece boundary
    text = continuation(tok, ids[:len(head)], ids[len(head):])
    assert text.startswith(" ") and "Return the" + text == tok.decode(ids.tolist())
    assert tok.decode(ids[len(head):].tolist())[:1] != " "  # what decoding the new ids alone loses


def test_fit_prompt_keeps_the_last_tokens_and_says_so(capsys):
    ids = np.arange(100, dtype=np.int32)
    assert np.array_equal(fit_prompt(ids, 64, 16), ids[-48:])
    assert "last 48 tokens" in capsys.readouterr().err
    assert np.array_equal(fit_prompt(ids[:10], 64, 16), ids[:10]) and capsys.readouterr().err == ""
    assert len(fit_prompt(ids, 8, 100)) == 1  # room for the continuation alone: one token of context


def test_generate_prints_the_prompt_then_its_continuation(text_run, capsys):
    assert main(["generate", "--checkpoint", str(text_run), "--prompt", "The module", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.startswith("The module")


def test_a_120kb_prompt_is_cut_within_a_memory_bound(text_run, tmp_path):
    """Uncut, 120 KB of text is tens of thousands of tokens: one attention matrix alone is GBs."""
    prompt = ("the module returns the value " * 5000)[:120_000]
    code = ("import resource, sys; from trainer.cli import main; "
            f"rc = main(['generate', '--checkpoint', {str(text_run)!r}, '--prompt', sys.argv[1], "
            "'--max-new-tokens', '4']); "
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cap = 3 << 30  # address space: a regression fails here (MemoryError) instead of swapping the machine
    p = subprocess.run([sys.executable, "-c", code, prompt], capture_output=True, text=True, env=env, timeout=300,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "exceed the model's sequence length 64" in p.stderr
    assert p.stdout.startswith(prompt[:1000])
    rss_mb = int(p.stderr.split("MAXRSS")[1].split()[0]) / 1024
    assert rss_mb < 1500, f"peak RSS {rss_mb:.0f} MB"
