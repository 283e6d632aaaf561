"""The demo's BabyAI task: `GatoDemo/BabyAI-GoToObj-v0`, registered when this module is imported.

BabyAI's observation is a 7x7x3 grid (object, colour, state of each cell in the agent's egocentric
view), a facing direction and a text mission. Tokenised cell by cell the grid is 147 tokens a
step; here it is drawn as one 16x16 RGB image instead (each cell 2x2 pixels, values spread over
0..255), so a step is one image patch + direction + mission + action, about 10 tokens, and the
demo's short sequences hold several steps. Acting uses the same id, so it sees the same images:

    gato-train eval ... with `env: demo_envs:GatoDemo/BabyAI-GoToObj-v0` (scripts/ on PYTHONPATH)
"""

from __future__ import annotations

import string

import gymnasium as gym
import numpy as np

ENV_ID = "GatoDemo/BabyAI-GoToObj-v0"
BASE_ID = "BabyAI-GoToObj-v0"
SCALE = np.array([23, 42, 100], np.uint16)  # object index <= 10, colour <= 5, state <= 2


def grid_image(grid: np.ndarray) -> np.ndarray:
    """7x7x3 grid codes -> 16x16x3 uint8: each cell 2x2 pixels, a 1-pixel black border."""
    cells = (np.asarray(grid, np.uint16) * SCALE).clip(0, 255).astype(np.uint8)
    out = np.zeros((16, 16, 3), np.uint8)
    out[1:15, 1:15] = cells.repeat(2, axis=0).repeat(2, axis=1)
    return out


class GridImage(gym.ObservationWrapper):
    def __init__(self, env: gym.Env):
        super().__init__(env)
        spaces = dict(env.observation_space.spaces)
        spaces["image"] = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
        spaces["mission"] = gym.spaces.Text(max_length=200, charset=string.ascii_letters + " ,")  # not MissionSpace
        self.observation_space = gym.spaces.Dict(spaces)

    def observation(self, obs: dict) -> dict:
        return {**obs, "image": grid_image(obs["image"])}


def make(**kwargs) -> gym.Env:
    import minigrid

    gym.register_envs(minigrid)
    return GridImage(gym.make(BASE_ID, **kwargs))


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=make)
