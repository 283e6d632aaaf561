"""Shared fixtures: small real data made on the spot (no hub, no network). The helpers they call
live in tests/support (importable as `tests.support.*` by tests and benchmarks alike)."""

from __future__ import annotations

import os
import signal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

from tests.support.s3 import moto_s3_server
from tests.support.shards import make_caption_shard_dir, make_corpus, make_rl_shard_dir, make_text_shard_dir
from tokenizer_kit.layout import VocabLayout


def pytest_configure(config):
    """MuJoCo appends every warning (gymnasium's v5 models warn at load) to MUJOCO_LOG.TXT in the
    working directory, which under `make test` is the repo root; the warnings still reach stderr,
    only the file is turned off (MjLogConfig, MuJoCo >= 3.4). Imported here, where the [envs] extra
    is optional: a session without MuJoCo has nothing to turn off."""
    try:
        import mujoco
    except ImportError:
        return
    log = mujoco.MjLogConfig.get()
    log.logto_file = False
    log.set()


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory) -> str:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory, corpus_path) -> str:
    """A small SentencePiece BPE model (vocab 512) trained on the corpus."""
    from tokenizer_kit.text import train_tokenizer
    out = tmp_path_factory.mktemp("spm") / "tiny.model"
    return str(train_tokenizer([corpus_path], 512, out))


@pytest.fixture(scope="session")
def text_tokenizer(sp_model_path):
    from tokenizer_kit.text import TextTokenizer
    return TextTokenizer(sp_model_path)


@pytest.fixture
def layout() -> VocabLayout:
    return VocabLayout(text_vocab_size=32000, eos_id=2)



@pytest.fixture(scope="session")
def rl_shard_dir(tmp_path_factory, sp_model_path):
    return make_rl_shard_dir(tmp_path_factory.mktemp("rl_shards"), sp_model_path)


@pytest.fixture(scope="session")
def caption_shard_dir(tmp_path_factory, sp_model_path):
    return make_caption_shard_dir(tmp_path_factory.mktemp("caption_shards"), sp_model_path)


@pytest.fixture(scope="session")
def text_shard_dir(tmp_path_factory, sp_model_path, corpus_path):
    return make_text_shard_dir(tmp_path_factory.mktemp("text_shards"), sp_model_path, corpus_path)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two threads oversubscribe and run 4x slower."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 for the session (tests.support.s3.moto_s3_server); yields its URL."""
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    """A fresh Minari datasets folder per test module, and no hub: Minari's own writer makes the data."""
    import warnings
    from pathlib import Path

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(tmp_path_factory.mktemp("minari")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield Path(tmp_path_factory.getbasetemp())


@pytest.fixture
def sigterm_at_step(monkeypatch):
    """sigterm_at_step(N): gato-train runs in this process get SIGTERM when they reach step N, as a
    preempted job would; sigterm_at_step(None) lets them run on."""
    import trainer.train as train_mod
    original = train_mod.Trainer.train_step

    def arm(step: int | None) -> None:
        def step_then_sigterm(self):
            if self.step == step:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self)
        monkeypatch.setattr(train_mod.Trainer, "train_step", original if step is None else step_then_sigterm)
    return arm
