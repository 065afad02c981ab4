"""The game contract: a researcher's environment adapted to what the page needs, every result checked.

Standard library only and free of package-relative imports, because the browser worker fetches this
file and imports it in Pyodide, while the tests and the reproducibility check import it in CPython.
The formats it accepts are documented in docs/games.md.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import random
import re
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

MAX_SHAPES = 10_000
MAX_TEXT = 1_000
MAX_IMAGE_SIDE = 2_048
MAX_DEPTH = 32
PLAIN = "plain data (numbers, strings, lists, maps)"
DRAWING = "a drawing {width, height, shapes} or an RGB image (H×W×3)"
RESET = "(observation, info)"
STEP = "(observation, reward, terminated, truncated, info)"
MULTI_RESET = "(observations, infos), dicts by agent"
MULTI_STEP = "(observations, rewards, terminations, truncations, infos), dicts by agent"

_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_INT64 = (-(2**63), 2**64 - 1)
_ALIGN = ("left", "center", "right")
_NUMBERS = frozenset({"x", "y", "w", "h", "r", "x1", "y1", "x2", "y2", "size", "line_width"})
_NON_NEGATIVE = frozenset({"w", "h", "r", "line_width"})
_COLOURS = frozenset({"fill", "stroke"})
_SHAPES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "rect": (("x", "y", "w", "h"), {"fill": None, "stroke": None, "line_width": 1}),
    "circle": (("x", "y", "r"), {"fill": None, "stroke": None, "line_width": 1}),
    "line": (("x1", "y1", "x2", "y2"), {"stroke": "#000", "line_width": 1}),
    "text": (("x", "y", "text"), {"size": 16, "fill": "#000", "align": "left"}),
    "image": (("x", "y", "w", "h", "asset"), {}),
}
_DRAWING_FIELDS = ("width", "height", "background", "shapes")


class ContractError(Exception):
    """The environment broke the contract; the message is plain enough to show a participant and record."""


def load(spec: str, kwargs: Mapping[str, Any] | None = None, *, assets: Iterable[str] | None = None) -> Game:
    """Import `module:factory` and call `factory(**kwargs)`, so every failure to start is one ContractError."""
    if not isinstance(spec, str) or not _SPEC.fullmatch(spec):
        raise ContractError(f"environment must be 'module:factory', got {_short(spec)}")
    module_name, factory_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ContractError(f"could not import {module_name}: {_last_line(exc)}") from exc
    factory = getattr(module, factory_name, None)
    if factory is None:
        raise ContractError(f"module {module_name} has no {factory_name}; expected a factory for {spec}")
    if not callable(factory):
        raise ContractError(f"{spec} is {_kind(factory)}; expected a class or function that makes the environment")
    try:
        env = factory(**dict(kwargs or {}))
    except Exception as exc:
        raise ContractError(f"{factory_name}(**env_kwargs) failed: {_last_line(exc)}") from exc
    return Game(env, assets=assets)


class Game:
    """One environment behind the contract: each call returns plain, checked data or raises ContractError."""

    def __init__(self, env: Any, *, assets: Iterable[str] | None = None) -> None:
        missing = [name for name in ("reset", "step", "render") if not callable(getattr(env, name, None))]
        if missing:
            raise ContractError(
                f"the environment ({type(env).__name__}) has no {', '.join(m + '()' for m in missing)}; "
                "expected reset(seed=...), step(action) and render()"
            )
        try:
            inspect.signature(env.reset).bind(seed=0)
        except TypeError as exc:
            raise ContractError("reset() must accept a seed keyword: def reset(self, seed=None, options=None)") from exc
        except ValueError:
            pass
        self.env = env
        self.assets = None if assets is None else frozenset(assets)

    def reset(self, seed: int) -> dict[str, Any]:
        """Start an episode from the server's seed, which is all the randomness an episode may use."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {_short(seed)}")
        result = self._call("reset", lambda: self.env.reset(seed=seed))
        if not isinstance(result, tuple) or len(result) != 2:
            raise ContractError(f"reset() returned {_kind(result)}; expected {RESET}")
        observation, info = result
        return {"observation": plain(observation, "observation"), "info": _info(info)}

    def step(self, action: Any) -> dict[str, Any]:
        """Take one action and check all five parts of what comes back."""
        result = self._call("step", lambda: self.env.step(action))
        if not isinstance(result, tuple) or len(result) != 5:
            raise ContractError(f"step() returned {_kind(result)}; expected {STEP}")
        observation, reward, terminated, truncated, info = result
        return {
            "observation": plain(observation, "observation"),
            "reward": _reward(reward),
            "terminated": _flag(terminated, "terminated"),
            "truncated": _flag(truncated, "truncated"),
            "info": _info(info),
        }

    def frame(self) -> dict[str, Any]:
        """What to show now: a checked drawing, or an RGB image as bytes the page can put on a canvas."""
        picture = self._call("render", self.env.render)
        if isinstance(picture, Mapping):
            return {"kind": "drawing", "drawing": check_drawing(picture, self.assets)}
        if hasattr(picture, "shape") and callable(getattr(picture, "tobytes", None)):
            return _rgb_array(picture)
        if isinstance(picture, (list, tuple)):
            return _rgb_lists(picture)
        raise ContractError(f"render() returned {_kind(picture)}; expected {DRAWING}")

    def _call(self, name: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except ContractError:
            raise
        except Exception as exc:
            raise ContractError(f"{name}() raised {_last_line(exc)}") from exc


def _payload(agent: Any) -> dict[str, Any]:
    """An agent as the scene declares it (`Human(...)`, `Bot(...)`) or as its payload: a researcher replaying in
    CPython passes the same `agents` they gave `GymScene`."""
    payload = getattr(agent, "payload", None)
    return dict(payload() if callable(payload) else agent)


class Team:
    """A multi-agent environment (the PettingZoo parallel API's shape) with the Python side of its bots.

    `agents` is each agent's payload (server/agents.py). Python and random policies choose here; an ONNX policy's
    scores come from the page's onnxruntime and are turned into an action here, with the agent's seeded `rng`.
    """

    def __init__(self, env: Any, agents: Mapping[str, Any], *, assets: Iterable[str] | None = None):
        self.game = Game(env, assets=assets)
        self.env = env
        self.agents = {str(a): _payload(p) for a, p in agents.items()}
        self.policies: dict[str, Callable[..., Any]] = {}
        for agent_id, agent in self.agents.items():
            policy = agent.get("policy") or {}
            if policy.get("kind") == "python":
                self.policies[agent_id] = _policy(policy["spec"], agent_id)
        self.observations: dict[str, Any] = {}
        self.rngs: dict[str, random.Random] = {}
        self.returns: dict[str, float] = {}  # each agent's rewards summed since the episode's reset, for state_hash

    def reset(self, seed: int) -> dict[str, Any]:
        """Start an episode; each agent's `rng` is seeded from the episode's seed and the agent's id."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {_short(seed)}")
        result = self.game._call("reset", lambda: self.env.reset(seed=seed))
        if not isinstance(result, tuple) or len(result) != 2:
            raise ContractError(f"reset() returned {_kind(result)}; expected {MULTI_RESET}")
        observations, info = result
        self.observations = self._by_agent(observations, "reset() observations")
        self.rngs = {agent_id: random.Random(f"{seed}:{agent_id}") for agent_id in self.agents}
        self.returns = {agent_id: 0.0 for agent_id in self.agents}
        return {"observations": plain(self.observations, "observations"), "info": _info(info)}

    def step(self, actions: Mapping[str, Any]) -> dict[str, Any]:
        """Every agent's action at once; the episode ends when any agent is terminated or truncated."""
        actions = {str(a): v for a, v in dict(actions).items()}
        try:
            result = self.game._call("step", lambda: self.env.step(actions))
        except ContractError as exc:  # which agent's action it choked on is the first thing a researcher asks
            raise ContractError(f"{exc} (the actions: {_short(actions)})") from exc.__cause__
        if not isinstance(result, tuple) or len(result) != 5:
            raise ContractError(f"step() returned {_kind(result)}; expected {MULTI_STEP}")
        observations, rewards, terminations, truncations, infos = result
        self.observations = self._by_agent(observations, "step() observations")
        rewards = {a: _reward(r) for a, r in self._by_agent(rewards, "step() rewards").items()}
        terminated = any(_flag(f, "terminations") for f in self._by_agent(terminations, "step() terminations").values())
        truncated = any(_flag(f, "truncations") for f in self._by_agent(truncations, "step() truncations").values())
        for agent_id, reward in rewards.items():
            self.returns[agent_id] = self.returns.get(agent_id, 0.0) + reward
        return {
            "observations": plain(self.observations, "observations"),
            "rewards": rewards,
            "reward": math.fsum(rewards.values()),
            "terminated": terminated,
            "truncated": truncated and not terminated,
            "info": _info(infos),
        }

    def frame(self) -> dict[str, Any]:
        return self.game.frame()

    def assign(self, agent_id: str, payload: Mapping[str, Any]) -> None:
        """A bot takes over an agent mid-game (a multiplayer slot nobody plays): its policy from now on, with the
        agent's rng as the episode's reset seeded it, so every page and a replay in CPython choose the same."""
        agent_id = str(agent_id)
        if agent_id not in self.agents:
            raise ContractError(f"no agent {agent_id} to give a bot; the agents are {', '.join(self.agents)}")
        payload = dict(payload)
        policy = payload.get("policy") or {}
        if policy.get("kind") == "python":
            self.policies[agent_id] = _policy(policy["spec"], agent_id)
        self.agents[agent_id] = payload

    def state_hash(self) -> str:
        """What every page and the CPython export check compare after a frame: the environment's own
        `state_hash()` if it has one, else a SHA-256 prefix of the canonical JSON of the current observations and
        each agent's return since the episode's reset. Pure Python, so Pyodide and CPython give the same string."""
        own = getattr(self.env, "state_hash", None)
        if callable(own):
            value = self.game._call("state_hash", own)
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise ContractError(f"state_hash() returned {_kind(value)}; expected a string or an integer")
            return str(value)
        state = {"observations": plain(self.observations, "observations"), "returns": self.returns}
        canonical = json.dumps(state, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def act(self, agent_id: str) -> Any:
        """A Python or random policy's action for the agent's current observation."""
        agent = self.agents[agent_id]
        policy, rng = agent["policy"], self.rngs[agent_id]
        if policy["kind"] == "random":
            if policy.get("actions"):
                return rng.choice(list(policy["actions"]))
            return rng.randrange(self._action_count(agent_id))
        name = f"policy {policy['spec']} (agent {agent_id})"
        try:
            action = self.policies[agent_id](self.observations[agent_id], agent_id, rng)
        except Exception as exc:
            raise ContractError(f"{name} raised {_last_line(exc)}") from exc
        return plain(action, f"the action of {name}")

    def features(self, agent_id: str) -> list[float]:
        """The agent's observation flattened to numbers, the input of its ONNX model."""
        return flatten(self.observations[agent_id], f"agent {agent_id}'s observation")

    def choose(self, agent_id: str, scores: Sequence[float]) -> dict[str, Any]:
        """The action an ONNX policy's scores give, with the probabilities it was drawn from."""
        policy = self.agents[agent_id]["policy"]
        return sample(list(scores), policy["sample"], policy["temperature"], self.rngs[agent_id])

    def _by_agent(self, value: Any, what: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ContractError(f"{what} must be a dict by agent id, got {_kind(value)}")
        missing = [a for a in self.agents if a not in value]
        if missing:
            raise ContractError(f"{what} has no entry for agent {', '.join(missing)}")
        return {a: value[a] for a in self.agents}

    def _action_count(self, agent_id: str) -> int:
        space = getattr(self.env, "action_space", None)
        space = space(agent_id) if callable(space) else space
        n = getattr(space, "n", None)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ContractError(
                f"RandomPolicy for agent {agent_id}: give actions=..., or give the environment "
                "action_space(agent) with a positive .n"
            )
        return n


def _policy(spec: str, agent_id: str) -> Callable[..., Any]:
    if not isinstance(spec, str) or not _SPEC.fullmatch(spec):
        raise ContractError(f"policy for agent {agent_id} must be 'module:function', got {_short(spec)}")
    module_name, name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ContractError(f"could not import the policy module {module_name}: {_last_line(exc)}") from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise ContractError(f"policy {spec} (agent {agent_id}) is not a function of (observation, agent_id, rng)")
    return function  # type: ignore[no-any-return]


def flatten(observation: Any, name: str) -> list[float]:
    """Nested lists (or arrays) of numbers as one flat list of floats, in row-major order."""
    out: list[float] = []

    def walk(value: Any) -> None:
        if isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, (int, float)):
            out.append(float(value))
        else:
            raise ContractError(f"{name} must be numbers or nested lists of numbers for a model, got {_kind(value)}")

    walk(plain(observation, name))
    return out


def sample(scores: list[float], how: str, temperature: float, rng: random.Random) -> dict[str, Any]:
    """`argmax` takes the first best score; `softmax` draws from softmax(scores / temperature) with `rng`."""
    if not scores or not all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores):
        raise ContractError(f"the model gave {_short(scores)}; expected one finite score per action")
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    total = math.fsum(weights)
    probs = [w / total for w in weights]
    if how == "argmax":
        return {"action": scores.index(top), "probs": probs}
    x, acc = rng.random(), 0.0
    for action, p in enumerate(probs):
        acc += p
        if x < acc:
            return {"action": action, "probs": probs}
    return {"action": len(probs) - 1, "probs": probs}


def load_team(
    spec: str,
    kwargs: Mapping[str, Any] | None,
    agents: Mapping[str, Any],
    *,
    assets: Iterable[str] | None = None,
) -> Team:
    """Like `load`, for a multi-agent scene: the environment and its Python policies, or one ContractError."""
    game = load(spec, kwargs, assets=assets)
    return Team(game.env, agents, assets=assets)


def replay_team(
    spec: str,
    kwargs: Mapping[str, Any] | None,
    agents: Mapping[str, Any],
    episodes: Sequence[tuple[int, Sequence[Mapping[str, Any]]]],
) -> list[list[dict[str, Any]]]:
    """Rerun recorded multi-agent episodes: per step, what each agent observed before it, and the actions the
    Python and random bots choose here (on their frame_skip ticks), to compare with what the page recorded."""
    team = load_team(spec, kwargs, agents)
    runs = []
    for seed, steps in episodes:
        team.reset(seed)
        run = []
        for index, actions in enumerate(steps):
            chosen = {}
            for agent_id, agent in team.agents.items():
                kind = (agent.get("policy") or {}).get("kind")
                if kind in ("python", "random") and index % agent.get("frame_skip", 1) == 0:
                    chosen[agent_id] = team.act(agent_id)
            observed = plain(team.observations, "observations")
            result = team.step(actions)
            run.append({"observations": observed, "bot_actions": chosen, "reward": result["reward"]})
            if result["terminated"] or result["truncated"]:
                break
        runs.append(run)
    return runs


def replay_match(
    spec: str,
    kwargs: Mapping[str, Any] | None,
    agents: Mapping[str, Any],
    seeds: Sequence[int],
    frames: Iterable[Mapping[str, Any]],
    *,
    episodes: int,
    max_steps: int,
    bot: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Rerun a multiplayer match's frames exactly as every page does (client/web/match.js): per frame applied, its
    episode and step, every agent's action (the bots' chosen here) and the state hash after it. An episode ends
    after a terminated or truncated step or `max_steps`; the next frame starts the next seed; after the last
    episode the remaining frames are not applied. ONNX bots cannot be replayed here (their scores come from a model)."""
    team = load_team(spec, kwargs, agents)
    episode, step, over = 0, 0, False
    chosen: dict[str, Any] = {}
    assigned: set[str] = set()
    team.reset(seeds[0])
    out: list[dict[str, Any]] = []
    for frame in sorted(frames, key=lambda item: item["f"]):
        if over:
            episode += 1
            if episode >= episodes:
                break
            team.reset(seeds[episode])
            step, over = 0, False
            chosen = {}
        actions = dict(frame["actions"])
        for agent_id in frame.get("bots") or []:
            if agent_id not in assigned:
                if bot is None:
                    raise ContractError(f"frame {frame['f']} gives {agent_id} to a bot, but no bot payload was given")
                team.assign(agent_id, bot)
                assigned.add(agent_id)
        bots = [a for a, p in team.agents.items() if p.get("kind") == "bot"]
        for agent_id in bots:
            if agent_id in assigned and agent_id not in (frame.get("bots") or []):
                continue
            agent = team.agents[agent_id]
            if (agent.get("policy") or {}).get("kind") == "onnx":
                raise ContractError(f"agent {agent_id}'s ONNX policy cannot be replayed in CPython")
            if step % agent.get("frame_skip", 1) == 0 or agent_id not in chosen:
                chosen[agent_id] = team.act(agent_id)
            actions[agent_id] = chosen[agent_id]
        result = team.step(actions)
        step += 1
        over = result["terminated"] or result["truncated"] or step >= max_steps
        out.append({"f": frame["f"], "episode": episode, "step": step, "actions": actions, "hash": team.state_hash()})
    return out


def replay(
    spec: str, kwargs: Mapping[str, Any] | None, episodes: Sequence[tuple[int, Sequence[Any]]]
) -> list[list[dict[str, Any]]]:
    """Rerun recorded episodes in this Python, so an export can be compared with what the environment does here."""
    game = load(spec, kwargs)
    runs = []
    for seed, actions in episodes:
        game.reset(seed)
        run = []
        for action in actions:
            result = game.step(action)
            run.append({k: result[k] for k in ("reward", "terminated", "truncated")})
            if result["terminated"] or result["truncated"]:
                break
        runs.append(run)
    return runs


def plain(value: Any, name: str) -> Any:
    """`value` as data the page and the export can carry; `name` is what an error calls it."""
    return _plain(value, name, name, 0)


def _plain(value: Any, name: str, where: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ContractError(f"{name} must be {PLAIN}; it is nested more than {MAX_DEPTH} deep at {where}")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise ContractError(f"{name} must be {PLAIN}; {where} is an integer wider than 64 bits")
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, name, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise ContractError(f"{name} must be {PLAIN}; {where} has a key {_short(key)} that is not a string")
            out[str(key)] = _plain(v, name, f"{where}[{key!r}]", depth + 1)
        return out
    if callable(getattr(value, "tolist", None)):
        return _plain(value.tolist(), name, where, depth + 1)
    raise ContractError(f"{name} must be {PLAIN}; {where} is {_kind(value)}")


def _info(info: Any) -> dict[str, Any]:
    if not isinstance(info, dict):
        raise ContractError(f"info must be a dict of {PLAIN}, got {_kind(info)}")
    checked: dict[str, Any] = plain(info, "info")
    return checked


def _reward(reward: Any) -> float:
    value = reward.tolist() if callable(getattr(reward, "tolist", None)) else reward
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContractError(f"reward must be a number, got {_short(reward)}")
    if not math.isfinite(value):
        raise ContractError(f"reward must be a finite number, got {_short(reward)}")
    return float(value)


def _flag(flag: Any, name: str) -> bool:
    value = flag.tolist() if callable(getattr(flag, "tolist", None)) else flag
    if not isinstance(value, bool):
        raise ContractError(f"{name} must be True or False, got {_short(flag)}")
    return value


def check_drawing(drawing: Mapping[str, Any], assets: frozenset[str] | None = None) -> dict[str, Any]:
    """The drawing with its numbers made plain and every default filled in, so the page draws exactly what it gets."""
    unknown = sorted(str(k) for k in drawing if k not in _DRAWING_FIELDS)
    if unknown:
        raise ContractError(f"drawing has unknown fields {', '.join(unknown)}; expected {', '.join(_DRAWING_FIELDS)}")
    width = _number(drawing.get("width"), "drawing width", positive=True)
    height = _number(drawing.get("height"), "drawing height", positive=True)
    background = _colour(drawing.get("background", "#fff"), "drawing background")
    shapes = drawing.get("shapes")
    if not isinstance(shapes, (list, tuple)):
        raise ContractError(f"drawing shapes must be a list, got {_kind(shapes)}")
    if len(shapes) > MAX_SHAPES:
        raise ContractError(f"drawing has {len(shapes):,} shapes; at most {MAX_SHAPES:,} are allowed")
    return {
        "width": width,
        "height": height,
        "background": background,
        "shapes": [_shape(shape, i, assets) for i, shape in enumerate(shapes)],
    }


def _shape(shape: Any, index: int, assets: frozenset[str] | None) -> dict[str, Any]:
    where = f"drawing shape {index}"
    if not isinstance(shape, Mapping):
        raise ContractError(f"{where} is {_kind(shape)}; expected a map with a kind")
    kind = shape.get("kind")
    if kind not in _SHAPES:
        raise ContractError(f"{where} has kind {_short(kind)}; expected one of {', '.join(_SHAPES)}")
    required, optional = _SHAPES[kind]
    where = f"{where} ({kind})"
    unknown = sorted(str(k) for k in shape if k != "kind" and k not in required and k not in optional)
    if unknown:
        expected = ", ".join(("kind", *required, *optional))
        raise ContractError(f"{where} has unknown fields {', '.join(unknown)}; expected {expected}")
    missing = [k for k in required if k not in shape]
    if missing:
        raise ContractError(f"{where} is missing {', '.join(missing)}")
    out: dict[str, Any] = {"kind": kind}
    for key in (*required, *optional):
        value = shape.get(key, optional.get(key))
        label = f"{where} {key}"
        if key in _NUMBERS:
            out[key] = _number(value, label, positive=key == "size", non_negative=key in _NON_NEGATIVE)
        elif key in _COLOURS:
            out[key] = None if value is None else _colour(value, label)
        elif key == "align":
            if value not in _ALIGN:
                raise ContractError(f"{label} must be one of {', '.join(_ALIGN)}, got {_short(value)}")
            out[key] = value
        elif key == "text":
            if not isinstance(value, str) or len(value) > MAX_TEXT:
                raise ContractError(f"{label} must be a string of at most {MAX_TEXT:,} characters")
            out[key] = str(value)
        elif key == "asset":
            if not isinstance(value, str) or (assets is not None and value not in assets):
                declared = ", ".join(sorted(assets)) if assets else "none"
                raise ContractError(f"{label} {_short(value)} is not an asset the scene declares ({declared})")
            out[key] = value
    if kind in ("rect", "circle") and "fill" not in shape and "stroke" not in shape:
        out["fill"] = "#000"
    return out


def _number(value: Any, label: str, *, positive: bool = False, non_negative: bool = False) -> int | float:
    number = value.tolist() if callable(getattr(value, "tolist", None)) else value
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise ContractError(f"{label} must be a number, got {_short(value)}")
    if positive and number <= 0:
        raise ContractError(f"{label} must be positive, got {number}")
    if non_negative and number < 0:
        raise ContractError(f"{label} must not be negative, got {number}")
    return number


def _colour(value: Any, label: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise ContractError(f"{label} must be a CSS colour such as '#fff' or 'red', got {_short(value)}")
    return str(value)


def _rgb_array(image: Any) -> dict[str, Any]:
    shape = tuple(image.shape)
    if len(shape) != 3 or shape[2] != 3:
        raise ContractError(f"render() returned an image of shape {shape}; expected an RGB image (H×W×3)")
    height, width = int(shape[0]), int(shape[1])
    _check_side(width, height)
    dtype = getattr(image, "dtype", None)
    if dtype is not None and str(dtype) != "uint8":
        raise ContractError(f"render() returned an image of {dtype}; an RGB image must be uint8 (0-255)")
    data = bytes(image.tobytes())
    if len(data) != width * height * 3:
        raise ContractError(
            f"render() returned {len(data):,} bytes for a {height}×{width}×3 image; expected {width * height * 3:,}"
        )
    return {"kind": "rgb", "width": width, "height": height, "data": data}


def _rgb_lists(rows: Sequence[Any]) -> dict[str, Any]:
    height = len(rows)
    width = len(rows[0]) if height and isinstance(rows[0], (list, tuple)) else 0
    _check_side(width, height)
    data = bytearray()
    for y, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) != width:
            raise ContractError(f"render() image row {y} is not a list of {width} pixels like row 0")
        for x, pixel in enumerate(row):
            try:
                if len(pixel) != 3 or any(isinstance(v, bool) for v in pixel):
                    raise ValueError
                data += bytes(pixel)
            except (TypeError, ValueError) as exc:
                raise ContractError(
                    f"render() image pixel ({x}, {y}) is {_short(pixel)}; expected [r, g, b] integers 0-255"
                ) from exc
    return {"kind": "rgb", "width": width, "height": height, "data": bytes(data)}


def _check_side(width: int, height: int) -> None:
    if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE):
        raise ContractError(
            f"render() returned a {height}×{width} image; expected an RGB image (H×W×3) "
            f"between 1 and {MAX_IMAGE_SIDE:,} pixels a side"
        )


def _kind(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, tuple):
        return f"a {len(value)}-tuple"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _last_line(exc: BaseException) -> str:
    return traceback.format_exception_only(type(exc), exc)[-1].strip()
