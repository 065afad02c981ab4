"""Who plays each agent of a game: a human at the keyboard, or a bot with a policy.

A policy always runs in the participant's page, in the same worker as the environment, and
chooses synchronously with each step: tick f uses every agent's action for tick f's observation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
SAMPLING = ("argmax", "softmax")


def whole(value: Any) -> TypeGuard[int]:
    """A count as a definition must give it: an int, not a bool or text."""
    return isinstance(value, int) and not isinstance(value, bool)


def number(value: Any) -> TypeGuard[float]:
    """A quantity as a definition must give it: an int or a float, not a bool or text."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class PythonPolicy:
    """`module:function`, called as `function(observation, agent_id, rng) -> action`; `rng` is a seeded
    `random.Random`, so the same participant seed gives the same bot actions."""

    spec: str
    kind = "python"

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not _SPEC.fullmatch(self.spec):
            raise ValueError(f"PythonPolicy: give 'module:function', got {self.spec!r}")

    @property
    def module(self) -> str:
        return self.spec.split(":", 1)[0].split(".", 1)[0]

    def payload(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec}


@dataclass(frozen=True)
class OnnxPolicy:
    """A trained model, run by onnxruntime-web in the page's worker: the observation (flattened to float32) in,
    one score per action out; `sample` picks the action from the scores."""

    path: str  # relative to the experiment file
    input_name: str | None = None  # default: the model's first input
    sample: str = "argmax"
    temperature: float = 1.0
    input_size: int | None = None  # the flattened observation length; start-up checks the model takes it
    kind = "onnx"

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            raise ValueError(f"OnnxPolicy: the model path is text, relative to the study file, got {self.path!r}")
        if self.input_name is not None and not isinstance(self.input_name, str):
            raise ValueError(f"OnnxPolicy {self.path!r}: input_name is text, got {self.input_name!r}")
        if self.sample not in SAMPLING:
            raise ValueError(f"OnnxPolicy {self.path!r}: sample must be one of {', '.join(SAMPLING)}")
        if not (number(self.temperature) and self.temperature > 0):
            raise ValueError(f"OnnxPolicy {self.path!r}: temperature must be positive, got {self.temperature!r}")
        if Path(self.path).is_absolute() or ".." in Path(self.path).parts:
            raise ValueError(f"OnnxPolicy: the model path must be inside the study folder, got {self.path!r}")
        size = self.input_size
        if size is not None and not (whole(size) and size >= 1):
            raise ValueError(f"OnnxPolicy {self.path!r}: input_size must be a positive integer, got {size!r}")

    def payload(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "input_name": self.input_name,
            "sample": self.sample,
            "temperature": self.temperature,
            "input_size": self.input_size,
        }


@dataclass(frozen=True)
class RandomPolicy:
    """A uniformly random action drawn from the seeded `rng`: one of `actions`, or, when none are given, an
    integer below the environment's `action_space(agent).n` (or `action_space.n`)."""

    actions: tuple[Any, ...] = ()
    kind = "random"

    def __post_init__(self) -> None:
        object.__setattr__(self, "actions", tuple(self.actions))

    def payload(self) -> dict[str, Any]:
        return {"kind": self.kind, "actions": list(self.actions)}


Policy = PythonPolicy | OnnxPolicy | RandomPolicy


@dataclass(frozen=True)
class Human:
    """An agent the participant plays with the keys."""

    keys: Mapping[str, Any] = field(default_factory=dict)
    default_action: Any = 0
    kind = "human"

    def __post_init__(self) -> None:
        if not isinstance(self.keys, Mapping):
            raise ValueError(f"Human: keys map key names to actions, got {self.keys!r}")
        object.__setattr__(self, "keys", dict(self.keys))

    def payload(self) -> dict[str, Any]:
        return {"kind": self.kind, "keys": dict(self.keys), "default_action": self.default_action}


@dataclass(frozen=True)
class Bot:
    """An agent a policy plays; with `frame_skip=k` it chooses every k ticks and repeats its action between."""

    policy: Policy
    frame_skip: int = 1
    record_policy: bool = False  # record the action probabilities (ONNX policies)
    kind = "bot"

    def __post_init__(self) -> None:
        if not isinstance(self.policy, (PythonPolicy, OnnxPolicy, RandomPolicy)):
            raise TypeError(f"Bot: policy must be a PythonPolicy, OnnxPolicy or RandomPolicy, got {self.policy!r}")
        if not whole(self.frame_skip) or self.frame_skip < 1:
            raise ValueError(f"Bot: frame_skip must be a whole number of at least 1, got {self.frame_skip!r}")
        if not isinstance(self.record_policy, bool):
            raise ValueError(f"Bot: record_policy is True or False, got {self.record_policy!r}")

    def payload(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "policy": self.policy.payload(),
            "frame_skip": self.frame_skip,
            "record_policy": self.record_policy,
        }


Agent = Human | Bot
