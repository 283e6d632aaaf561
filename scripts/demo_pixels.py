"""The demo's pixel task (in `make demo`; `scripts/demo.py --no-pixels` leaves it out):
MiniGrid-Empty-Random-6x6 seen through its RGB view, the whole 6x6 grid drawn at 4 pixels a tile
(24x24x3, fitted to 32x32: 4 patches a step).

The expert is a shortest path to the goal over (cell, facing) with minigrid's left, right and
forward (breadth-first search on the true grid), so its action is a function of the image. Episodes
are recorded into Minari through `RGBImgObsWrapper` + `ImgObsWrapper`; minigrid's wrappers do not
record their arguments, so the conversion names the environment with `--env-spec` (ENV_SPEC).
"""

from __future__ import annotations

from collections import deque

import numpy as np

ENV_ID = "MiniGrid-Empty-Random-6x6-v0"
TILE = 4
ENV_SPEC = {"id": ENV_ID, "wrappers": [
    {"entry_point": "minigrid.wrappers:RGBImgObsWrapper", "kwargs": {"tile_size": TILE}},
    {"entry_point": "minigrid.wrappers:ImgObsWrapper"}]}
LEFT, RIGHT, FORWARD = 0, 1, 2
STEP = ((1, 0), (0, 1), (-1, 0), (0, -1))  # minigrid's DIR_TO_VEC: right, down, left, up


def make_env():
    import gymnasium as gym
    import minigrid
    from minigrid.wrappers import ImgObsWrapper, RGBImgObsWrapper
    gym.register_envs(minigrid)
    return ImgObsWrapper(RGBImgObsWrapper(gym.make(ENV_ID), tile_size=TILE))


def expert_action(env) -> int:
    """The first action of a shortest path from the agent's cell and facing to the goal."""
    u = env.unwrapped
    start = (int(u.agent_pos[0]), int(u.agent_pos[1]), int(u.agent_dir))
    seen = {start: None}
    queue = deque([start])
    while queue:
        x, y, d = state = queue.popleft()
        cell = u.grid.get(x, y)
        if cell is not None and cell.type == "goal":
            while seen[state] is not None and seen[state][0] != start:
                state = seen[state][0]
            return seen[state][1]
        dx, dy = STEP[d]
        nxt = [((x, y, (d - 1) % 4), LEFT), ((x, y, (d + 1) % 4), RIGHT)]
        ahead = u.grid.get(x + dx, y + dy)
        if ahead is None or ahead.can_overlap():
            nxt.append(((x + dx, y + dy, d), FORWARD))
        for s, a in nxt:
            if s not in seen:
                seen[s] = (state, a)
                queue.append(s)
    return FORWARD


def record(episodes: int, seed: int = 0):
    """Expert episodes from reset(seed=seed + i) as Minari EpisodeBuffers, and their returns."""
    from minari.data_collector import EpisodeBuffer

    env = make_env()
    buffers, returns = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        while True:
            a = expert_action(env)
            obs, r, term, trunc, _ = env.step(a)
            observations.append(obs), actions.append(a), rewards.append(float(r))
            terms.append(bool(term)), truncs.append(bool(trunc))
            if term or trunc:
                break
        buffers.append(EpisodeBuffer(id=i, seed=seed + i, observations=np.stack(observations),
                                     actions=np.asarray(actions, np.int64), rewards=rewards,
                                     terminations=terms, truncations=truncs))
        returns.append(sum(rewards))
    return buffers, np.asarray(returns), env
