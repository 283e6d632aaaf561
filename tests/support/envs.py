"""Small gymnasium environments for acting and inspection tests."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


def pong_like_env(size: int = 32):
    """An Atari-like gymnasium env: Dict(frame (size, size, 3) uint8, ram (4,) float32), Discrete(3)
    paddle moves (stay, up, down); +1 when the right paddle meets the ball, -1 when it misses."""

    class PongLike(gym.Env):
        metadata = {"render_modes": []}

        def __init__(self):
            self.observation_space = gym.spaces.Dict({
                "frame": gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
                "ram": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)})
            self.action_space = gym.spaces.Discrete(3)

        def _obs(self):
            f = np.full((size, size, 3), 20, np.uint8)
            f[:, :2] = 90
            f[max(0, self.left - 4):self.left + 4, 2:4] = (220, 60, 60)
            f[max(0, self.paddle - 4):self.paddle + 4, size - 4:size - 2] = (60, 200, 60)
            f[self.y - 1:self.y + 1, self.x - 1:self.x + 1] = 255
            return {"frame": f, "ram": np.array([self.x, self.y, self.dx, self.paddle], np.float32)}

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            r = self.np_random
            self.x, self.y = int(r.integers(6, size // 2)), int(r.integers(4, size - 4))
            self.dx, self.dy, self.paddle, self.left = 2, int(r.choice([-1, 1])), size // 2, size // 2
            return self._obs(), {}

        def step(self, action):
            self.paddle = int(np.clip(self.paddle + (0, -2, 2)[int(action)], 4, size - 4))
            self.left = int(np.clip(self.y, 4, size - 4))
            self.x, self.y = self.x + self.dx, self.y + self.dy
            if not 2 < self.y < size - 2:
                self.dy, self.y = -self.dy, int(np.clip(self.y, 2, size - 2))
            reward, done = 0.0, False
            if self.x >= size - 5:
                hit = abs(self.y - self.paddle) <= 4
                reward, done = (1.0, False) if hit else (-1.0, True)
                self.dx = -self.dx
            elif self.x <= 5:
                self.dx = -self.dx
            return self._obs(), reward, done, False, {}

    return PongLike()
