"""A tiny Gato trained on a LeRobot dataset mixed with another task, then acting on the recorded
robot episode: no robot simulator installs here (gym-aloha / gym-pusht need MuJoCo scenes and
pins that clash with this environment), so the recorded episode is replayed through the acting
path (trainer.acting.rollout.Agent: observation fields -> tokens, the model's action ids, decoded back to
the action's own units) and every step's tokens must equal the converted row's."""

from __future__ import annotations


import numpy as np
import pytest


from tests.support.robot_data import CAMERAS, FPS, TASKS, make_episodes, write_lerobot_v3

pytestmark = pytest.mark.slow


def test_trained_model_acts_on_the_recorded_robot_episode(tmp_path, sp_model_path):
    from tests.support.shards import make_rl_shard_dir
    from converters.cli import main as tokenize_main
    from converters.rl.sources.video import decode_all
    from schemas.reader import ShardDir
    from schemas.shard import row_from_table
    from tokenizer_kit.episode_decode import decode_actions
    from trainer.checkpoint import load_model
    from trainer.cli import main as train_main
    from trainer.acting.rollout import Agent, EpisodeContext, action_slots, load_demonstrations, slice_tokens

    episodes = make_episodes([6, 5, 7], seed=4)
    root = write_lerobot_v3(tmp_path / "so100_pick", episodes, data_files=1)
    robot = tmp_path / "robot"
    # --repeated-text-loss: the acting path marks every text observation a target, as the rows did
    # before repeats left the loss (a loss mask never reaches the model, so acting is the same)
    assert tokenize_main(["rl", str(root), "--out", str(robot), "--text-tokenizer", sp_model_path,
                          "--repeated-text-loss", "--no-progress"]) == 0
    other = tmp_path / "pong"
    make_rl_shard_dir(other, sp_model_path)
    run = tmp_path / "run"
    assert train_main(["--data", f"{robot}:1", f"{other}:1", "--out", str(run), "--seq-len", "256", "--steps", "40",
                       "--no-progress"]) == 0
    model, layout, _ = load_model(run)
    demos = load_demonstrations(robot)
    layout.check_same(demos.layout, "shards", "checkpoint")
    agent = Agent(model, layout, demos.spec, seq_len=512, text_tokenizer=demos.text_tokenizer)

    row = row_from_table(ShardDir.open(robot).table(0), 0)  # episode 0, as converted
    e = episodes[0]
    frames = {}
    for cam in CAMERAS:  # the recorded camera frames: the decoder's frames at the episode's timestamps
        times, pics = decode_all(str(root / "videos" / cam / "chunk-000" / "file-000.mp4"))
        frames[cam] = pics[[int(np.argmin(np.abs(times - t / FPS))) for t in range(e.length)]]
    bounds = np.append(row.step_starts, len(row.tokens))
    spec = demos.spec
    slots = action_slots(spec, layout)
    ctx = EpisodeContext(prompt=slice_tokens(row, 0, 0))
    agreed = 0
    act_field = spec.actions[0]
    for t in range(e.length):
        obs = {"images.top": frames["observation.images.top"][t], "images.wrist": frames["observation.images.wrist"][t],
               "state": e.state[t], "task": TASKS[e.task_index]}
        a, b = int(bounds[t]), int(bounds[t + 1])
        current = agent.observe(obs)
        for col in ("tokens", "loss_mask", "local_pos", "modality"):
            np.testing.assert_array_equal(getattr(current, col), getattr(row, col)[a:a + len(current)],
                                          err_msg=f"step {t} {col}")
        first = _patch_start(row, a)  # the step's camera patches: the pixels the converter decoded
        np.testing.assert_array_equal(current.patches, row.patches[first:first + len(current.patches)])
        # the model acts: legal ids, decoded into the action's own units within the dataset's bounds
        ctx.trimmed = True  # the recorded step replaces the sampled one below: rebuild the cache
        values = agent.act([obs], [ctx], [slots])[0]
        lo, hi = np.asarray(act_field.bounds[0]), np.asarray(act_field.bounds[1])
        assert ((values["action"] >= lo - 1e-6) & (values["action"] <= hi + 1e-6)).all()
        sampled = ctx.history[-1].tokens[len(current):]
        recorded = row.tokens[a + len(current):b]
        assert all(s.lo <= i < s.hi for s, i in zip(slots, sampled))
        agreed += int(np.count_nonzero(sampled == recorded))
        # replay: the recorded action through the acting path gives the converter's step exactly
        full = agent.step_row(obs, decode_actions(recorded, spec, layout))
        np.testing.assert_array_equal(full.tokens, row.tokens[a:b], err_msg=f"step {t}")
        ctx.history[-1] = full
    print(f"action tokens the model chose as recorded: {agreed}/{e.length * len(slots)}")


def _patch_start(row, token: int) -> int:
    """Index of the first patch at or after token position `token` of the row."""
    from tokenizer_kit.layout import PATCH_SLOT
    return int(np.count_nonzero(row.tokens[:token] == PATCH_SLOT))
