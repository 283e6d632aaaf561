"""The environment a dataset was recorded in: its id, constructor kwargs and wrapper chain.

An agent trained on Atari frames recorded through `AtariPreprocessing` + `FrameStackObservation`
can only act in an environment wrapped the same way: 84x84 grey frames, 4 emulator frames a step,
4 stacked. The converter records that chain in the manifest (`Manifest.env_spec`), taken from a
Minari dataset's env spec (gymnasium's `EnvSpec`, whose `additional_wrappers` name each wrapper
and its kwargs) or given with `gato-tokenize rl --env-spec` for tables; acting rebuilds it
(trainer/acting/envs.py).

A manifest is data, and data is hostile: a wrapper is accepted only from the modules in
`WRAPPER_MODULES` (an entry point is imported and called when acting), an id never names a module
to import (`module:Id`), and kwargs are JSON values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tokenizer_kit.errors import first_line

# wrapper entry points acting may import: gymnasium's own wrappers, the plugins' wrapper modules,
# and gato-kit's own (trainer/env_wrappers.py: observation layouts of published datasets)
WRAPPER_MODULES = ("gymnasium.wrappers", "minigrid.wrappers", "ale_py", "trainer.env_wrappers")
MAX_WRAPPERS = 16


class EnvSpecError(ValueError):
    """An env spec that cannot be trusted or read: one line."""


@dataclass(frozen=True)
class WrapperSpec:
    """One wrapper of the chain, innermost first: `entry_point` (`module:Class`) called with the
    environment and `kwargs`."""

    name: str
    entry_point: str
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        module, _, attr = self.entry_point.partition(":")
        if not attr or not any(module == m or module.startswith(m + ".") for m in WRAPPER_MODULES):
            raise EnvSpecError(f"wrapper {self.name!r}: entry point {self.entry_point!r} is not a wrapper of "
                               f"{', '.join(WRAPPER_MODULES)}")
        _check_json("wrapper " + repr(self.name), self.kwargs)


@dataclass(frozen=True)
class EnvSpec:
    """An environment id, the kwargs it was made with, its wrappers (innermost first) and time limit."""

    id: str
    kwargs: dict = field(default_factory=dict)
    wrappers: tuple[WrapperSpec, ...] = ()
    max_episode_steps: int | None = None

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id or ":" in self.id or len(self.id) > 200:
            raise EnvSpecError(f"environment id {self.id!r}: expected a registered id (no module prefix)")
        _check_json(f"environment {self.id!r}", self.kwargs)
        if len(self.wrappers) > MAX_WRAPPERS:
            raise EnvSpecError(f"environment {self.id!r}: {len(self.wrappers)} wrappers (at most {MAX_WRAPPERS})")
        if self.max_episode_steps is not None and (not isinstance(self.max_episode_steps, int)
                                                   or self.max_episode_steps < 1):
            raise EnvSpecError(f"environment {self.id!r}: max_episode_steps {self.max_episode_steps!r}")

    def to_dict(self) -> dict:
        return {"id": self.id, "kwargs": dict(self.kwargs), "max_episode_steps": self.max_episode_steps,
                "wrappers": [{"name": w.name, "entry_point": w.entry_point, "kwargs": dict(w.kwargs)}
                             for w in self.wrappers]}

    @classmethod
    def from_dict(cls, d) -> "EnvSpec":
        """Ours (`wrappers`) or gymnasium's `EnvSpec.to_json()` form (`additional_wrappers`), as
        Minari stores it; other keys of gymnasium's form (entry_point, ...) are not taken."""
        if not isinstance(d, dict):
            raise EnvSpecError(f"an env spec must be a JSON object, got {type(d).__name__}")
        chain = d.get("wrappers", d.get("additional_wrappers")) or []
        if not isinstance(chain, list) or not all(isinstance(w, dict) for w in chain):
            raise EnvSpecError("env spec: 'wrappers' must be a list of objects")
        try:
            unrecorded = [w.get("name") or w["entry_point"] for w in chain if "additional_wrappers" in d
                          and w.get("kwargs") is None]
            wrappers = tuple(WrapperSpec(str(w.get("name") or w["entry_point"].rpartition(":")[2]),
                                         str(w["entry_point"]), w.get("kwargs") or {}) for w in chain)
        except KeyError as e:
            raise EnvSpecError(f"env spec: a wrapper has no {e.args[0]!r}") from None
        if unrecorded:  # gymnasium writes None for a wrapper that does not record its arguments
            raise EnvSpecError(f"wrapper {unrecorded[0]} did not record its arguments (rebuilding it with its "
                               f"defaults could give other observations)")
        return cls(d.get("id"), d.get("kwargs") or {}, wrappers,  # type: ignore[arg-type]  # checked on init
                   d.get("max_episode_steps"))

    @classmethod
    def from_gymnasium(cls, spec) -> "EnvSpec":
        """From a `gymnasium.envs.registration.EnvSpec` (a Minari dataset's `env_spec`)."""
        return cls.from_dict(json.loads(spec.to_json()))

    @classmethod
    def parse(cls, text: str) -> "EnvSpec":
        """`--env-spec`: inline JSON, a JSON file, or a bare id (no kwargs, no wrappers)."""
        text = text.strip()
        if not text.startswith("{"):
            p = Path(text)
            if not p.suffix == ".json":
                return cls(text)
            try:
                text = p.read_text()
            except (OSError, ValueError) as e:
                raise EnvSpecError(f"{p}: unreadable env spec ({first_line(e)})") from None
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, RecursionError) as e:
            if isinstance(e, EnvSpecError):
                raise
            raise EnvSpecError(f"env spec: not JSON ({first_line(e)})") from None


def _check_json(what: str, kwargs) -> None:
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise EnvSpecError(f"{what}: kwargs must be an object with string keys")
    try:
        json.dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise EnvSpecError(f"{what}: kwargs that are not JSON values ({e})") from None
