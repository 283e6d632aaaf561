"""Environments for acting: any id an installed package registers, wrapped as the data was recorded.

Gymnasium knows only its own ids until a plugin is imported: `ALE/Breakout-v5` exists once ale-py
is, `BabyAI-GoToLocal-v0` once minigrid is. `make_env_fn` tries the id as typed, then with every
installed plugin registered, and fails with one line naming what it tried.

The wrappers the demonstrations were recorded through must wrap the acting environment too, or
the agent sees other observations and its actions mean other things: `EnvWrappers` says which
(frame stacking, actions rescaled to [-1, 1]); `EnvWrappers.from_manifest` reads them from a
shard directory's manifest where the converter recorded them. Where the manifest records the
environment itself (`Manifest.env_spec`: id, kwargs, wrapper chain, e.g. AtariPreprocessing +
FrameStackObservation), acting rebuilds exactly that environment; an `--env` naming another id
gets the recorded wrappers around it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable, cast

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator, registry
import numpy as np

from tokenizer_kit.errors import first_line

# Packages whose import (or `gymnasium.register_envs(module)`) registers environment ids.
PLUGINS = ("ale_py", "minigrid", "shimmy", "gymnasium_robotics", "metaworld", "highway_env")


class UnknownEnvError(ValueError):
    """An environment id no installed package registers."""


@dataclass(frozen=True)
class EnvWrappers:
    """How the recorded environment was wrapped: actions rescaled from [-1, 1], frames stacked."""

    rescale_actions: bool = False
    frame_stack: int = 1
    recorded: object = None  # schemas.env_spec.EnvSpec the data was recorded in, when the manifest says

    @classmethod
    def from_manifest(cls, manifest, rescale_actions: bool = False, recorded=None) -> "EnvWrappers":
        """The wrappers the recorded data implies. A stacked observation field (its `frame_stack`
        in the episode spec) means the environment's frames are stacked to that depth where the
        environment does not stack them itself. Actions rescaled from declared bounds need no
        wrapper: the agent maps them back to the environment's units (tokenizer_kit's
        decode_actions); `rescale_actions` is for data recorded through gymnasium's RescaleAction.
        `recorded` (a suite's override) replaces the manifest's env spec."""
        spec = manifest.spec if manifest is not None else None
        stacks = [f.frame_stack for f in spec.observations if f.frame_stack is not None] if spec else []
        if recorded is None and manifest is not None:
            recorded = manifest.env
        return cls(rescale_actions, stacks[0].depth if stacks else 1, recorded)


def _register_plugins() -> tuple[list[str], list[str]]:
    """Import every installed plugin so its ids are registered; (registered, not installed)."""
    done, missing = [], []
    for name in PLUGINS:
        if importlib.util.find_spec(name) is None:
            missing.append(name)
            continue
        try:
            module = importlib.import_module(name)
            gym.register_envs(module)
            done.append(name)
        except Exception:  # a broken plugin must not hide the others
            missing.append(name)
    return done, missing


def resolve_env_id(env_id: str) -> str:
    """`env_id` as gymnasium will find it, registering installed plugins when it is not yet known."""
    if env_id in registry:
        return env_id
    if ":" in env_id:  # `module:Id`: gymnasium imports the module; say so in one line if it cannot
        module = env_id.split(":", 1)[0]
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - any failure of a plugin's import is this one error
            raise UnknownEnvError(f"environment {env_id!r}: its module {module!r} cannot be imported "
                                  f"({type(e).__name__}: {(str(e).splitlines() or [''])[0]})") from None
        return env_id
    done, missing = _register_plugins()
    if env_id in registry:
        return env_id
    try:
        gym.spec(env_id)  # versionless or near spellings: gymnasium's own message says which
        return env_id
    except gym.error.Error as e:
        hint = first_line(e) if str(e) else ""
        raise UnknownEnvError(
            f"unknown environment {env_id!r}: not registered by gymnasium or the installed plugins "
            f"({', '.join(done) or 'none'}); not installed: {', '.join(missing) or 'none'}"
            + (f" ({hint})" if "provides" in hint or "Did you mean" in hint else "")) from None


def _stacks_itself(space, depth: int) -> bool:
    """Whether observations already hold `depth` frames (channel-first or channel-last)."""
    shape: tuple[int, ...] = getattr(space, "shape", None) or ()
    return len(shape) == 3 and depth in (shape[0], shape[-1])


def make_env_fn(env_id: str, rescale_actions: bool = False, frame_stack: int = 1,
                wrappers: EnvWrappers | None = None) -> Callable[[], gym.Env]:
    """A factory for `env_id` wrapped as recorded: Box actions from [-1, 1] (docs/SPEC.md section 2
    bins actions there), the last `frame_stack` observations stacked."""
    wrappers = wrappers or EnvWrappers(rescale_actions, frame_stack)
    env_id = resolve_env_id(env_id)

    def make():
        env = _recorded_env(env_id, wrappers.recorded)
        if wrappers.rescale_actions and isinstance(env.action_space, gym.spaces.Box):
            env = gym.wrappers.RescaleAction(env, np.float32(-1.0), np.float32(1.0))
        if wrappers.frame_stack > 1 and not _stacks_itself(env.observation_space, wrappers.frame_stack):
            env = gym.wrappers.FrameStackObservation(env, wrappers.frame_stack)
        return env
    return make


def _recorded_env(env_id: str, recorded):
    """`env_id` made as recorded: with the recorded kwargs and time limit when it is the recorded
    id, and inside the recorded wrapper chain (innermost first) either way."""
    if recorded is None:
        return gym.make(env_id)
    if env_id == resolve_env_id(recorded.id):
        env = gym.make(env_id, max_episode_steps=recorded.max_episode_steps, **recorded.kwargs)
    else:
        env = gym.make(env_id)
    for w in recorded.wrappers:
        try:
            wrap = cast(Callable[..., gym.Env], load_env_creator(w.entry_point))  # a wrapper class, typed as a creator
            env = wrap(env, **w.kwargs)
        except (ImportError, AttributeError, TypeError, ValueError, gym.error.Error) as e:
            raise ValueError(f"recorded wrapper {w.name} ({w.entry_point}): cannot wrap {env_id} "
                             f"({first_line(e)})") from None
    return env
