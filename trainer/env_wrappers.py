"""Wrappers that give an environment's observations the layout a published dataset recorded.

The jat-dataset's BabyAI tasks hold each step as `text_observations` (the mission) and
`discrete_observations` (148 ints: the agent's direction, then the 7x7x3 grid view flattened in
row-major order); minigrid gives a dict of `mission`, `direction` and `image`. `JatBabyAI` makes
the second into the first, so an agent trained on those tables acts in minigrid. Named in an env
spec (`trainer.env_wrappers:JatBabyAI`), it is one of the modules schemas.env_spec lets acting import.
"""

from __future__ import annotations

from typing import cast

import gymnasium as gym
import numpy as np


class JatBabyAI(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """minigrid's {mission, direction, image} -> {text_observations, discrete_observations}."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        space = cast(gym.spaces.Dict, env.observation_space)  # minigrid's: a Dict the wrapped env declares
        grid = space["image"]
        size = 1 + int(np.prod(grid.shape or ()))
        self.observation_space = gym.spaces.Dict({
            "text_observations": space["mission"],
            "discrete_observations": gym.spaces.Box(0, 255, (size,), np.int64)})

    def observation(self, obs):
        grid = np.asarray(obs["image"], np.int64).reshape(-1)
        return {"text_observations": obs["mission"],
                "discrete_observations": np.concatenate([[int(obs["direction"])], grid])}
