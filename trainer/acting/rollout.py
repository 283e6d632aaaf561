"""Acting: run a trained Gato model as a policy in Gymnasium environments (SPEC 5, "Acting").

The agent sees exactly what training saw. Observation tokens come from the converter's own code
(`tokenizer_kit.sequence.build_episode`, the EpisodeSpec from the shard directory's manifest, the
layout from the checkpoint); a demonstration prompt (a window of an expert episode of the same task)
goes first; each action token is sampled from its slot's legal id range only and decoded through
the inverse tokenisation; the context is cut to the model's sequence length by dropping the oldest
steps (never the prompt). Episodes run side by side as one batch; a key/value cache
(trainer/acting/decoding.py) makes each observation and each action token one forward pass over the new
tokens only.

The command lines that act (`gato-train rollout`, `gato-train eval`) are in trainer/acting/evaluate.py.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np
import pyarrow.compute as pc
import torch
from tqdm import tqdm

from schemas.manifest import Manifest
from schemas.reader import ShardDir
from schemas.shard import row_from_table
from tokenizer_kit.episode_decode import acting_observation, decode_actions
from tokenizer_kit.fields import ACTION, field_keys, field_name, flatten_value
from tokenizer_kit.layout import CONTINUOUS, DISCRETE, VocabLayout
from tokenizer_kit.rows import concat_rows, slice_tokens
from tokenizer_kit.sequence import EpisodeSpec, Row, build_episode

from ..sampling import goal_start, window_start
from .decoding import Decoder, sample_in_ranges

PROMPT_MODES = ("end", "window", "none")


# --- rows: slicing and joining ------------------------------------------------------------------

def slice_steps(row: Row, start: int, stop: int) -> Row:
    """Timesteps [start, stop) of an episode row, with their patches."""
    bounds = np.append(row.step_starts, len(row.tokens)).astype(np.int64)
    a, b = int(bounds[start]), int(bounds[stop])
    part = slice_tokens(row, a, b)
    part.step_starts = (row.step_starts[start:stop] - a).astype(np.int32)
    return part


def prompt_window(row: Row, max_tokens: int, mode: str = "end", rng: np.random.Generator | None = None) -> Row:
    """A demonstration prompt of at most `max_tokens` tokens, chosen by the loader's own rule for
    training prompts: the episode's end from a timestep boundary (goal conditioning), or
    `max_tokens` tokens from a uniformly drawn boundary."""
    if mode == "none" or max_tokens <= 0:
        return concat_rows([])
    n = len(row.tokens)
    if mode == "end":
        start = goal_start(row.step_starts, n, max_tokens)
    elif mode == "window":
        start = window_start(row.step_starts, n, max_tokens, rng or np.random.default_rng())
    else:
        raise ValueError(f"unknown prompt mode {mode!r}; expected one of {', '.join(PROMPT_MODES)}")
    return slice_tokens(row, start, min(n, start + max_tokens))


# --- from environment values to fields and back ------------------------------------------------

def observation_fields(obs, spec: EpisodeSpec) -> dict:
    """One environment observation as the spec's fields, each with a leading step axis of 1."""
    if isinstance(obs, (Mapping, tuple)):
        flat = flatten_value(obs, "obs")
        if any(f.name not in flat for f in spec.observations):  # a table's fields: the keys themselves
            plain = {k.partition("/")[2]: v for k, v in flat.items()}
            flat = plain if all(f.name in plain for f in spec.observations) else flat
        missing = [f.name for f in spec.observations if f.name not in flat]
        if missing:
            raise ValueError(f"observation has no field {missing[0]!r} (has {sorted(flat)})")
        return {f.name: _one_step(flat[f.name], f.kind) for f in spec.observations}
    if len(spec.observations) != 1:
        raise ValueError(f"the environment gives one observation array but the task has fields "
                         f"{[f.name for f in spec.observations]}")
    f = spec.observations[0]
    return {f.name: _one_step(obs, f.kind)}


def _one_step(value, kind: str):
    if kind == "text":
        return [value]
    return np.asarray(value)[None]


@dataclass(frozen=True)
class ActionSlot:
    """One action token: its field, the legal half-open id range, and the field's kind."""

    field: str
    kind: str
    lo: int
    hi: int


def action_slots(spec: EpisodeSpec, layout: VocabLayout, action_space=None) -> list[ActionSlot]:
    """Legal id range of every action token, in token order.

    Continuous tokens may take any bin; discrete tokens only the values the action space allows
    (Discrete n, MultiDiscrete nvec), or the layout's whole discrete range without a space.
    """
    slots = []
    for f in spec.actions:
        if f.kind == "continuous":
            lo, hi = layout.id_range(CONTINUOUS)
            slots += [ActionSlot(f.name, f.kind, lo, hi)] * f.size
        elif f.kind == "discrete":
            lo, hi = layout.id_range(DISCRETE)
            space = action_member(action_space, f.name)
            if isinstance(space, gym.spaces.Discrete):
                if int(space.start) != 0:
                    raise ValueError(f"action field {f.name!r}: Discrete spaces must start at 0, got {space.start}")
                limits = [int(space.n)] * f.size
            elif isinstance(space, gym.spaces.MultiDiscrete):
                limits = [int(n) for n in np.asarray(space.nvec).reshape(-1)]
            else:
                limits = [hi - lo] * f.size
            if len(limits) != f.size:
                raise ValueError(f"action field {f.name!r} has {f.size} tokens, the action space {len(limits)}")
            slots += [ActionSlot(f.name, f.kind, lo, lo + min(n, hi - lo)) for n in limits]
        else:
            raise ValueError(f"action field {f.name!r} of kind {f.kind!r} cannot be sampled")
    return slots


def action_member(action_space, name: str):
    """The member of a Dict/Tuple action space that action field `name` fills: by the converters'
    rule `action/KEY[/SUB]` (tokenizer_kit.fields), else, for a table's fields, the key itself."""
    if not isinstance(action_space, (gym.spaces.Dict, gym.spaces.Tuple)):
        return action_space
    keys = field_keys(name, ACTION) or (name,)
    space: Any = action_space  # a member at any depth; one that is no container raises below
    for k in keys:
        try:
            space = space[int(k)] if isinstance(space, gym.spaces.Tuple) else space[k]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ValueError(f"action field {name!r} names no member of the action space {action_space}") from None
    return space


def env_action(values: dict[str, np.ndarray], spec: EpisodeSpec, action_space):
    """Field values -> what `env.step` takes (an int for Discrete, an array for Box, a dict for
    Dict, a tuple for Tuple); Dict/Tuple members are found by `action_member`'s rule."""
    def one(v, space):
        if isinstance(space, gym.spaces.Discrete):
            return int(np.asarray(v).reshape(-1)[0])
        if isinstance(space, (gym.spaces.Box, gym.spaces.MultiDiscrete)):
            return np.asarray(v, dtype=space.dtype).reshape(space.shape)
        return v

    def nested(space, name: str, depth: int):
        if isinstance(space, gym.spaces.Dict):
            return {k: nested(s, field_name(name, k), depth + 1) for k, s in space.spaces.items()}
        if isinstance(space, gym.spaces.Tuple):
            return tuple(nested(s, field_name(name, i), depth + 1) for i, s in enumerate(space.spaces))
        if name not in values and depth == 1 and name.partition("/")[2] in values:  # a table's field: the key
            name = name.partition("/")[2]
        if name not in values:
            raise ValueError(f"the action space's member {name!r} has no action field (fields: {sorted(values)})")
        return one(values[name], space)

    if isinstance(action_space, (gym.spaces.Dict, gym.spaces.Tuple)):
        return nested(action_space, ACTION, 0)
    (name,) = values.keys() if len(values) == 1 else (None,)
    if name is None:
        raise ValueError(f"several action fields {sorted(values)} need a Dict action space")
    return one(values[name], action_space)


# --- acting -------------------------------------------------------------------------------------

@dataclass
class EpisodeResult:
    ret: float
    steps: int


@dataclass
class EpisodeContext:
    """What one episode's agent conditions on: a demonstration prompt and the steps played so far."""

    prompt: Row
    history: deque = field(default_factory=deque)  # Rows of whole played steps, oldest first
    trimmed: bool = True  # the context lost its oldest steps (or is new): the decoder must restart


class Agent:
    """Acts in several environments at once, one decoder row per environment.

    Each step the context is prompt + the latest steps + the current observation. When it would
    exceed seq_len, the oldest steps go (never the prompt), a quarter of seq_len more than needed so
    the cache is rebuilt only every so many steps; the same rule holds without the cache, so both
    see the same contexts and choose the same actions.
    """

    def __init__(self, model, layout: VocabLayout, spec: EpisodeSpec, seq_len: int, temperature: float = 0.0,
                 text_tokenizer=None, seed: int = 0, cache: bool = True, top_k: int = 0, trim: float = 0.25,
                 frame_modes: dict[str, str] | None = None):
        self.model, self.layout, self.spec = model, layout, spec
        self.seq_len, self.temperature, self.text_tokenizer = seq_len, temperature, text_tokenizer
        self.top_k = top_k
        self.frame_modes = frame_modes or {}  # Manifest.frame_modes(): frame stacks as the data has them
        self.generator = torch.Generator().manual_seed(seed)
        self.cache, self.trim = cache, trim  # trim: share of seq_len freed beyond need when steps are dropped
        self.decoder: Decoder | None = None
        self._rows: list[int] = []  # id() of the EpisodeContext in each decoder row

    def _fields(self, obs) -> dict:
        """The step's observation fields as the converter saw them: the one place where what the
        manifest records about how observations were recorded (frame stacks) is applied."""
        return acting_observation(observation_fields(obs, self.spec), self.spec, self.frame_modes)

    def observe(self, obs) -> Row:
        """Observation tokens + separator of one step, exactly as the converter writes them."""
        return build_episode(self._fields(obs), None, self.spec, self.layout, self.text_tokenizer)

    def step_row(self, obs, action_values: dict) -> Row:
        """The full timestep (observation, separator, action) as the converter writes it."""
        acts = {k: np.asarray(v)[None] for k, v in action_values.items()}
        return build_episode(self._fields(obs), acts, self.spec, self.layout, self.text_tokenizer)

    def step_template(self, obs) -> Row:
        """The timestep with placeholder actions: the converter's columns for every action token;
        only the sampled ids are put in."""
        zeros = {f.name: np.zeros((1, *(f.shape or ())), np.int64 if f.kind == "discrete" else np.float32)
                 for f in self.spec.actions}
        return build_episode(self._fields(obs), zeros, self.spec, self.layout, self.text_tokenizer)

    def fit(self, ep: EpisodeContext, step_tokens: int) -> None:
        """Drop the oldest steps until prompt + history + a step of `step_tokens` fits seq_len."""
        budget = self.seq_len - len(ep.prompt) - step_tokens
        if budget < 0:
            raise ValueError(f"prompt ({len(ep.prompt)} tokens) and one step ({step_tokens}) exceed the "
                             f"sequence length {self.seq_len}; use a shorter prompt")
        used = sum(len(h) for h in ep.history)
        if used > budget:
            target = max(0, budget - int(self.seq_len * self.trim))
            while ep.history and used > target:
                used -= len(ep.history.popleft())
            ep.trimmed = True

    def context(self, ep: EpisodeContext, current: Row) -> Row:
        return concat_rows([ep.prompt, *ep.history, current])

    def act(self, observations: Sequence, episodes: Sequence[EpisodeContext],
            slots: Sequence[Sequence[ActionSlot]]) -> list[dict]:
        """Sample every action token of one step for each environment; returns field values and
        appends the played step to each episode's history."""
        n_act = len(slots[0])
        templates = [self.step_template(o) for o in observations]
        n_obs = [len(t) - n_act for t in templates]  # text observations differ in length between episodes
        currents = [slice_tokens(t, 0, n) for t, n in zip(templates, n_obs)]
        for ep, t in zip(episodes, templates):
            # the last action token is predicted from everything before it: that context must fit
            self.fit(ep, len(t) - 1)
        contexts = [self.context(ep, c) for ep, c in zip(episodes, currents)]
        ids = [id(ep) for ep in episodes]
        decoder = self.decoder
        if decoder is None or any(ep.trimmed for ep in episodes) or not set(ids) <= set(self._rows):  # restart
            decoder = self.decoder = Decoder(self.model, self.cache)
            logits = decoder.start(contexts)
            for ep in episodes:
                ep.trimmed = False
        else:
            decoder.keep([self._rows.index(i) for i in ids])
            logits = decoder.extend([slice_tokens(c, n) for c, n in zip(contexts, decoder.lengths)])
        self._rows = ids
        chosen = np.zeros((len(observations), n_act), np.int64)
        for j in range(n_act):
            if j:
                logits = decoder.extend([slice_tokens(t, n + j - 1, n + j) for t, n in zip(templates, n_obs)])
            chosen[:, j] = sample_in_ranges(logits, [(s[j].lo, s[j].hi) for s in slots], self.temperature,
                                            self.generator, self.top_k)
            for t, n, c in zip(templates, n_obs, chosen[:, j]):
                t.tokens[n + j] = c
        for ep, t in zip(episodes, templates):
            ep.history.append(t)
        return [decode_actions(chosen[i], self.spec, self.layout) for i in range(len(observations))]


def run_episodes(agent: Agent, make_env: Callable[[], gym.Env], episodes: int, prompt_rows: Sequence[Row],
                 prompt_tokens: int, prompt_mode: str = "end", seed: int = 0, max_steps: int | None = None,
                 progress: bool = False, desc: str = "acting") -> list[EpisodeResult]:
    """Play `episodes` episodes side by side; each gets its own demonstration prompt."""
    rng = np.random.default_rng(seed)
    envs = [make_env() for _ in range(episodes)]
    slots = [action_slots(agent.spec, agent.layout, e.action_space) for e in envs]
    contexts = [EpisodeContext(prompt_window(prompt_rows[int(rng.integers(len(prompt_rows)))], prompt_tokens,
                                             prompt_mode, rng) if len(prompt_rows) else concat_rows([]))
                for _ in envs]
    obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]
    returns, steps = np.zeros(episodes), np.zeros(episodes, np.int64)
    active = list(range(episodes))
    limit = max_steps or getattr(envs[0].spec, "max_episode_steps", None)
    bar = None
    if progress:
        bar = tqdm(total=limit * episodes if limit else None, desc=desc, unit="env-step", leave=False,
                   dynamic_ncols=True)
    try:
        while active:
            values = agent.act([obs[i] for i in active], [contexts[i] for i in active], [slots[i] for i in active])
            still = []
            for i, v in zip(active, values):
                obs[i], r, term, trunc, _ = envs[i].step(env_action(v, agent.spec, envs[i].action_space))
                returns[i] += float(r)
                steps[i] += 1
                if not (term or trunc or (max_steps is not None and steps[i] >= max_steps)):
                    still.append(i)
                elif bar is not None and limit:
                    bar.update(max(0, limit - int(steps[i])))  # an early end: its unplayed steps are done too
            if bar is not None:
                bar.update(len(active))
                bar.set_postfix(running=len(still), mean_return=f"{returns.mean():.1f}")
            active = still
    finally:
        if bar is not None:
            bar.close()
        for e in envs:
            e.close()
    return [EpisodeResult(float(r), int(s)) for r, s in zip(returns, steps)]


# --- shard directories as prompt sources ------------------------------------------------------------

@dataclass
class Demonstrations:
    """Expert episodes of one task, read from a shard directory."""

    spec: EpisodeSpec
    layout: VocabLayout
    rows: list[Row]
    returns: np.ndarray
    task: str
    text_tokenizer: object = None
    steps: np.ndarray | None = None  # each episode's number of steps
    manifest: Manifest | None = None

    def returns_within(self, horizon: int | None) -> tuple[np.ndarray, bool]:
        """The episodes' returns over the first `horizon` steps, and whether that is exact.

        Shards keep each episode's return, not its rewards: an episode no longer than the horizon
        is exact, a longer one is scaled by horizon / its length (exact for a constant reward per
        step, an estimate otherwise) rather than compared whole with a shorter agent episode.
        """
        if horizon is None or self.steps is None or (self.steps <= horizon).all():
            return self.returns, True
        scale = np.minimum(1.0, horizon / np.maximum(self.steps, 1))
        return self.returns * scale, False


def load_demonstrations(shard_dir, task: str | None = None, max_rows: int | None = None) -> Demonstrations:
    """Episodes (and their returns) of `task` (default: the directory's only task), from a local
    directory or a URL, through the one shard reader."""
    d = ShardDir.open(shard_dir)
    spec = d.manifest.spec if d.manifest is not None else None
    if d.manifest is None or spec is None:  # spec: None without an episode_spec
        raise ValueError(f"{shard_dir}: not an RL shard directory (its manifest has no episode_spec)")
    rows, returns, steps, tasks = [], [], [], set()
    for i in range(len(d.shards)):
        table = d.table(i)
        names = table.column("task")
        tasks.update(pc.unique(names).to_pylist())
        keep = range(table.num_rows) if task is None else \
            np.flatnonzero(pc.equal(names, task).to_numpy(zero_copy_only=False))
        for j in keep:
            rows.append(row_from_table(table, int(j)))
            returns.append(table.column("episode_return")[int(j)].as_py())
            steps.append(table.column("num_steps")[int(j)].as_py())
            if max_rows is not None and len(rows) >= max_rows:
                break
    if task is None and len(tasks) > 1:
        raise ValueError(f"{shard_dir} holds several tasks {sorted(tasks)}; name one with --task")
    if not rows:
        raise ValueError(f"{shard_dir}: no episodes" + (f" of task {task!r}" if task else ""))
    return Demonstrations(spec, d.layout, rows,
                          np.asarray(returns, np.float64), task or next(iter(tasks)), d.text_tokenizer(),
                          np.asarray(steps, np.int64), d.manifest)
