"""Checkpoints: damage is found before loading, configs are checked before anything is allocated,
and refusals are one line that never suggests weights_only=False."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from tokenizer_kit.layout import VocabLayout
from trainer.checkpoint import (CHECKPOINT_NAME, CheckpointError, contents_digest, load_model, read_checkpoint,
                                save_checkpoint)
from trainer.model import GatoConfig, GatoModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _state() -> dict:
    cfg = GatoConfig(layout=VocabLayout(text_vocab_size=64, eos_id=1).to_dict(), n_layer=1, d_model=16, n_head=2,
                     d_ff=32, patch_channels=4, patch_groups=2)
    model = GatoModel(cfg)
    return {"version": 1, "step": 3, "model": model.state_dict(), "config": cfg.to_dict(), "args": {"lr": 1e-3},
            "rng": [{"torch": torch.get_rng_state(), "cuda": None}]}


@pytest.fixture
def ckpt(tmp_path):
    return save_checkpoint(_state(), tmp_path / CHECKPOINT_NAME)


def _refused(path, match: str) -> str:
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    msg = str(e.value)
    assert match in msg and "\n" not in msg and "weights_only" not in msg, msg
    return msg


def test_checkpoints_carry_and_pass_their_contents_sha256(ckpt):
    state = read_checkpoint(ckpt)
    assert state["sha256"] == contents_digest(state)
    model, _, cfg = load_model(ckpt)
    assert cfg.d_model == 16 and isinstance(model, GatoModel)


def test_twenty_flipped_bytes_are_refused_before_loading(ckpt):
    data = bytearray(ckpt.read_bytes())
    step = len(data) // 21
    for i in range(1, 21):
        data[i * step] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    _refused(ckpt, "damaged")


def test_changed_contents_under_a_valid_container_fail_the_sha256(ckpt):
    state = torch.load(ckpt, weights_only=True)
    state["model"]["embed.weight"][0, 0] = float("nan")  # the stored digest is kept
    torch.save(state, ckpt)
    _refused(ckpt, "do not match their sha256")


def test_a_zero_byte_checkpoint_is_one_line(tmp_path):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"")
    _refused(tmp_path, "empty checkpoint (0 bytes)")


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unsafe_pickles_are_refused_without_torch_advice(tmp_path):
    torch.save({"version": 1, "x": Boom()}, tmp_path / CHECKPOINT_NAME, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    _refused(tmp_path / CHECKPOINT_NAME, "refused: it holds objects other than tensors")


@pytest.mark.parametrize("change, match", [
    ({"n_head": "x"}, "config field 'n_head' is 'x', expected int"),
    ({"d_model": 16384}, "config does not match the weights"),
    ({"n_layer": 10**9}, "outside [1, 1024]"),
    ({"rope_base": float("nan")}, "config field 'rope_base'"),
    ({"layout": "gato"}, "config field 'layout'"),
    ({"n_head": 3}, "bad model config"),
])
def test_config_values_are_checked_before_anything_is_allocated(tmp_path, change, match):
    state = _state()
    state["config"].update(change)
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)  # a valid digest: the config checks catch it
    _refused(tmp_path, match)
    with pytest.raises(CheckpointError):
        load_model(tmp_path)


def test_gato_train_refuses_damaged_and_empty_checkpoints_in_one_line(tmp_path, capsys):
    from trainer.cli import main
    run = tmp_path / "run"
    run.mkdir()
    (run / CHECKPOINT_NAME).write_bytes(b"")
    assert main(["--data", str(tmp_path), "--out", str(run), "--steps", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "empty checkpoint (0 bytes)" in err


def test_expanded_views_never_become_gigabytes(tmp_path):
    state = _state()
    state["model"]["embed.weight"] = torch.zeros(1).expand(1 << 20, 1 << 14)  # 64 GiB as floats, 4 bytes on disk
    torch.save(state, tmp_path / CHECKPOINT_NAME)
    _refused(tmp_path, "overlapping memory")
