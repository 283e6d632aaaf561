"""Scripted experts for Gymnasium control tasks: the demonstrations the demo trains on.

Both controllers read the environment's own physical constants, so they stay right if Gymnasium
changes them, and both act on the observation alone (no access to the simulator's state).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def _dlqr(a: np.ndarray, b: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Gain K of the discrete-time LQR u = -K x (Riccati equation solved by SciPy)."""
    p = scipy.linalg.solve_discrete_are(a, b, q, r)
    return np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)


class CartPoleLQR:
    """LQR on (x, x_dot, theta, theta_dot) of CartPole, its force rounded to the nearer push.

    The linearised model is the Euler step Gymnasium's CartPole uses; LQR keeps the cart near the
    centre too, which a PD controller on the angle alone does not (the cart drifts off the track).
    """

    def __init__(self, env) -> None:
        u = env.unwrapped
        g, mc, mp, l, tau = u.gravity, u.masscart, u.masspole, u.length, u.tau
        total = mc + mp
        denom = l * (4.0 / 3.0 - mp / total)
        # theta_acc = (g*theta - F/total) / denom; x_acc = F/total - mp*l*theta_acc/total
        th_th, th_f = g / denom, -1.0 / (total * denom)
        x_th, x_f = -mp * l * th_th / total, 1.0 / total - mp * l * th_f / total
        a = np.eye(4) + tau * np.array([[0, 1, 0, 0], [0, 0, x_th, 0], [0, 0, 0, 1], [0, 0, th_th, 0]])
        b = tau * np.array([[0.0], [x_f], [0.0], [th_f]])
        self.k = _dlqr(a, b, np.diag([1.0, 1.0, 10.0, 1.0]), np.array([[0.1]]))[0]

    def __call__(self, obs: np.ndarray) -> int:
        force = -float(self.k @ np.asarray(obs, dtype=np.float64))
        return int(force > 0)  # action 1 pushes right (+force_mag), 0 left


class PendulumSwingUp:
    """Energy-shaping swing-up, then LQR balance near the top; torque clipped to the env's limit.

    Observation (cos th, sin th, th_dot) with th = 0 upright. Energy E = I/2 th_dot^2 + m g l/2 cos th
    with I = m l^2 / 3; pumping u ~ (E_top - E) th_dot adds energy until the pendulum swings up.
    """

    def __init__(self, env, pump_gain: float = 1.0, catch_angle: float = 0.6) -> None:
        u = env.unwrapped
        self.g, self.m, self.l, self.dt, self.max_torque = u.g, u.m, u.l, u.dt, float(u.max_torque)
        self.inertia = self.m * self.l ** 2 / 3.0
        self.e_top = self.m * self.g * self.l / 2.0
        self.pump_gain, self.catch_angle = pump_gain, catch_angle
        # th_ddot = 3g/(2l) th + 3/(m l^2) u, Euler step of dt (the env's own integration)
        a = np.array([[1.0, self.dt], [3 * self.g / (2 * self.l) * self.dt, 1.0]])
        b = np.array([[0.0], [3.0 / (self.m * self.l ** 2) * self.dt]])
        self.k = _dlqr(a, b, np.diag([1.0, 0.1]), np.array([[0.01]]))[0]

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        c, s, th_dot = (float(v) for v in obs)
        th = np.arctan2(s, c)
        if abs(th) < self.catch_angle and abs(th_dot) < 4.0:
            u = -float(self.k @ np.array([th, th_dot]))
        else:
            energy = 0.5 * self.inertia * th_dot ** 2 + self.e_top * c
            u = self.pump_gain * (self.e_top - energy) * np.sign(th_dot if th_dot != 0 else 1.0) * self.max_torque
        return np.array([np.clip(u, -self.max_torque, self.max_torque)], dtype=np.float32)


EXPERTS = {"CartPole-v1": CartPoleLQR, "Pendulum-v1": PendulumSwingUp}


def make_expert(env_id: str, env):
    """The scripted expert for `env_id` (see EXPERTS)."""
    try:
        return EXPERTS[env_id](env)
    except KeyError:
        raise ValueError(f"no scripted expert for {env_id!r}; known: {', '.join(EXPERTS)}") from None
