"""The experiment model: scenes, wrappers, entry screening rules.

A researcher declares an `Experiment` in a Python file; the server gives each
participant their own order of it, from a seed recorded with their data.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

from .agents import Agent, Bot, Human, PythonPolicy, number, whole
from .multiplayer import Multiplayer


@dataclass(frozen=True)
class StartScene:
    """The welcome page; screening and the Python preload run while it is shown."""

    scene_id: str = "start"
    title: str = "Welcome"
    html: str = ""
    scene_type = "start"

    def payload(self) -> dict[str, Any]:
        return {"title": self.title, "html": self.html}


@dataclass(frozen=True)
class StaticScene:
    """A page of HTML: instructions, consent, a debrief."""

    scene_id: str
    html: str
    title: str = ""
    scene_type = "static"

    def payload(self) -> dict[str, Any]:
        return {"title": self.title, "html": self.html}


INPUTS = ("held", "press", "turn")
"""How keys become actions: keys held at each tick, one action per key press at the next tick, or one step per key."""
_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class GymScene:
    """A game whose environment (`module:factory`) runs in Python in the participant's page.

    The environment follows the Gymnasium API without importing it: `reset(seed=int) -> (obs, info)`,
    `step(action) -> (obs, reward, terminated, truncated, info)` and `render() -> frame` (docs/games.md).
    """

    scene_id: str
    environment: str
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    packages_to_install: Sequence[str] = ()
    keys: Mapping[str, Any] = field(default_factory=dict)
    default_action: Any = 0
    input: str = "held"
    fps: int = 20
    episodes: int = 1
    max_steps: int = 1000
    time_limit_s: float | None = None
    record_observations: bool = False
    show_score: bool = False
    pause_when_hidden: bool = False
    assets: Mapping[str, str] = field(default_factory=dict)  # name -> image file, relative to the experiment file
    title: str = ""
    html: str = ""
    run_through_pyodide: bool = True
    agents: Mapping[str, Agent] | None = None  # a multi-agent game (docs/games.md, AI partners); None: one agent
    multiplayer: Multiplayer | None = None  # one participant per Human agent, matched by the server
    scene_type = "game"

    def __post_init__(self) -> None:
        where = f"GymScene {self.scene_id!r}"
        if isinstance(self.packages_to_install, str):
            raise ValueError(
                f"{where}: packages_to_install is a list of names, got the string {self.packages_to_install!r}"
            )
        object.__setattr__(self, "packages_to_install", tuple(self.packages_to_install))
        for name in ("env_kwargs", "keys", "assets"):
            if not isinstance(getattr(self, name), Mapping):
                raise ValueError(f"{where}: {name} is a map (a dict), got {getattr(self, name)!r}")
        object.__setattr__(self, "env_kwargs", dict(self.env_kwargs))
        object.__setattr__(self, "keys", dict(self.keys))
        object.__setattr__(self, "assets", dict(self.assets))
        if not self.run_through_pyodide:
            raise ValueError(
                f"{where}: games run in the participant's page (Pyodide); run_through_pyodide=False is not supported"
            )
        if not _SPEC.fullmatch(self.environment):
            raise ValueError(f"{where}: environment must be 'module:factory', got {self.environment!r}")
        if self.input not in INPUTS:
            raise ValueError(f"{where}: input must be one of {', '.join(INPUTS)}, got {self.input!r}")
        for name in ("episodes", "max_steps", "fps"):
            value = getattr(self, name)
            if not whole(value) or value < 1:
                raise ValueError(f"{where}: {name} must be a whole number of at least 1, got {value!r}")
        limit = self.time_limit_s
        if limit is not None and not (number(limit) and limit > 0):
            raise ValueError(f"{where}: time_limit_s must be a positive number of seconds, got {limit!r}")
        for name, value in (
            ("env_kwargs", self.env_kwargs),
            ("keys", self.keys),
            ("default_action", self.default_action),
        ):
            if not _is_plain(value):
                raise ValueError(f"{where}: {name} must be plain data (numbers, strings, lists, maps)")
        if self.agents is not None:
            self._check_agents(where)
        elif self.multiplayer is not None:
            raise ValueError(f"{where}: a multiplayer game names its agents (one Human per participant)")
        for name in self.assets:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                raise ValueError(f"{where}: asset names are 1-64 letters, digits, '-' or '_', got {name!r}")

    def _check_agents(self, where: str) -> None:
        """One keyboard plays at most one agent, so the keys and default action come from that Human."""
        object.__setattr__(self, "agents", dict(self.agents or {}))
        agents = self.agents or {}
        if not agents:
            raise ValueError(f"{where}: agents must name at least one agent")
        for agent_id, agent in agents.items():
            if not isinstance(agent_id, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", agent_id):
                raise ValueError(f"{where}: agent ids are 1-64 letters, digits, '.', '-' or '_', got {agent_id!r}")
            if not isinstance(agent, (Human, Bot)):
                raise TypeError(f"{where}: agent {agent_id!r} must be a Human or a Bot, got {agent!r}")
            if isinstance(agent, Human) and not (_is_plain(agent.keys) and _is_plain(agent.default_action)):
                raise ValueError(f"{where}: agent {agent_id!r}: keys and default_action must be plain data")
        humans = [a for a, agent in agents.items() if isinstance(agent, Human)]
        if self.multiplayer is not None:
            if not isinstance(self.multiplayer, Multiplayer):
                raise TypeError(f"{where}: multiplayer must be a Multiplayer, got {self.multiplayer!r}")
            if len(humans) < 2:
                raise ValueError(f"{where}: a multiplayer game needs at least two Human agents, got {len(humans)}")
        elif len(humans) > 1:
            raise ValueError(f"{where}: one participant plays at most one Human agent, got {', '.join(humans)}")
        if self.keys or self.default_action != 0:
            raise ValueError(
                f"{where}: with agents, give the keys and default_action to the Human agent, not to the scene"
            )

    @property
    def human(self) -> str | None:
        """The agent the participant plays, if any."""
        return next((a for a, agent in (self.agents or {}).items() if isinstance(agent, Human)), None)

    @property
    def module(self) -> str:
        """The top-level module the environment is imported from."""
        return self.environment.split(":", 1)[0].split(".", 1)[0]

    @property
    def modules(self) -> tuple[str, ...]:
        """Every top-level module the page imports for this scene: the environment's, then the Python policies'."""
        bots = [agent for agent in (self.agents or {}).values() if isinstance(agent, Bot)]
        if self.multiplayer is not None:
            bots.append(self.multiplayer.bot)
        policies = [bot.policy.module for bot in bots if isinstance(bot.policy, PythonPolicy)]
        return tuple(dict.fromkeys([self.module, *policies]))

    def payload(self) -> dict[str, Any]:
        human = (self.agents or {}).get(self.human or "")
        controls = (
            {"keys": dict(human.keys), "default_action": human.default_action}
            if isinstance(human, Human)
            else {"keys": dict(self.keys), "default_action": self.default_action}
        )
        agents = None if self.agents is None else {a: agent.payload() for a, agent in self.agents.items()}
        return {
            "title": self.title,
            "html": self.html,
            "environment": self.environment,
            "env_kwargs": dict(self.env_kwargs),
            "packages_to_install": list(self.packages_to_install),
            **controls,
            "input": self.input,
            "fps": self.fps,
            "episodes": self.episodes,
            "max_steps": self.max_steps,
            "time_limit_s": self.time_limit_s,
            "record_observations": self.record_observations,
            "show_score": self.show_score,
            "pause_when_hidden": self.pause_when_hidden,
            "assets": sorted(self.assets),
            "agents": agents,
            **({} if self.multiplayer is None else {"multiplayer": self._multiplayer_payload(self.multiplayer)}),
        }

    def _multiplayer_payload(self, multiplayer: Multiplayer) -> dict[str, Any]:
        """What the page shows in the waiting room and plays an empty slot with; the server decides the rest."""
        size = sum(isinstance(agent, Human) for agent in (self.agents or {}).values())
        return {"group_size": size, "wait_timeout_s": multiplayer.wait_timeout_s, "bot": multiplayer.bot.payload()}


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


@dataclass(frozen=True)
class EndScene:
    """The last page: the completion code and, optionally, where to send the participant."""

    scene_id: str = "end"
    html: str = "Thank you for taking part."
    completion_code: str | None = None
    redirect_url: str | None = None
    scene_type = "end"

    def __post_init__(self) -> None:
        if self.completion_code is not None and not isinstance(self.completion_code, str):
            raise ValueError(f"EndScene: completion_code is text, got {self.completion_code!r}")
        if self.redirect_url is not None and not (
            isinstance(self.redirect_url, str) and self.redirect_url.startswith(("https://", "http://"))
        ):
            raise ValueError(f"EndScene: redirect_url is an http(s):// address, got {self.redirect_url!r}")

    def payload(self) -> dict[str, Any]:
        return {"html": self.html, "completion_code": self.completion_code, "redirect_url": self.redirect_url}


Scene = StartScene | StaticScene | GymScene | EndScene


@dataclass(frozen=True)
class RandomizeOrder:
    """Shuffle the wrapped scenes for each participant, keeping the first `keep_n`."""

    scenes: Sequence[Node]  # kept as a tuple
    keep_n: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scenes", tuple(self.scenes))
        if not self.scenes:
            raise ValueError("RandomizeOrder: give it at least one scene")
        if self.keep_n is not None and not (whole(self.keep_n) and 0 < self.keep_n <= len(self.scenes)):
            raise ValueError(f"RandomizeOrder: keep_n must be between 1 and {len(self.scenes)}, got {self.keep_n!r}")

    def unfold(self, rng: random.Random) -> list[Scene]:
        order = list(self.scenes)
        rng.shuffle(order)
        return [scene for node in order[: self.keep_n] for scene in _unfold(node, rng)]


@dataclass(frozen=True)
class RepeatScene:
    """Show the wrapped scene (or wrapper) `times` times in a row."""

    scene: Node
    times: int

    def __post_init__(self) -> None:
        if not whole(self.times) or self.times < 1:
            raise ValueError(f"RepeatScene: times must be at least 1, got {self.times!r}")

    def unfold(self, rng: random.Random) -> list[Scene]:
        return [scene for _ in range(self.times) for scene in _unfold(self.scene, rng)]


Node = Scene | RandomizeOrder | RepeatScene
WRAPPERS = (RandomizeOrder, RepeatScene)
SCENES = (StartScene, StaticScene, GymScene, EndScene)


def _unfold(node: Node, rng: random.Random) -> list[Scene]:
    return node.unfold(rng) if isinstance(node, WRAPPERS) else [node]


def _leaves(node: Node) -> Iterator[Scene]:
    if isinstance(node, RandomizeOrder):
        for child in node.scenes:
            yield from _leaves(child)
    elif isinstance(node, RepeatScene):
        yield from _leaves(node.scene)
    else:
        yield node


@dataclass(frozen=True)
class Placed:
    """One scene in one participant's order; repeats get their own instance id."""

    instance_id: str
    scene: Scene

    @property
    def scene_type(self) -> str:
        return self.scene.scene_type


_MOBILE = re.compile(r"Mobi|Android|iPhone|iPad|iPod")


_BROWSER_TOKENS = (
    ("Edg/", "edge"),
    ("OPR/", "opera"),
    ("Firefox/", "firefox"),
    ("Chrome/", "chrome"),
    ("Chromium/", "chrome"),
    ("Safari/", "safari"),
)
"""User-Agent tokens and the family each names; order matters, as most UAs claim to be several."""

BROWSERS = (*dict.fromkeys(name for _, name in _BROWSER_TOKENS), "other")
"""The names `ScreeningRules(browsers=...)` takes: a name outside them would exclude everyone."""


def browser_of(user_agent: str) -> str:
    """The browser family a User-Agent names."""
    for token, name in _BROWSER_TOKENS:
        if token in user_agent:
            return name
    return "other"


@dataclass(frozen=True)
class ScreeningRules:
    """Entry rules, judged by the server; the page only reports what it measured."""

    browsers: tuple[str, ...] | None = None
    allow_mobile: bool = True
    min_width: int = 0
    min_height: int = 0
    require_webassembly: bool = True
    max_rtt_ms: float | None = None

    def __post_init__(self) -> None:
        """Rules are checked where they are written: a misspelt browser or a width given as text would otherwise
        exclude every participant, or fail while they are being screened."""
        given: Any = self.browsers  # as written, which the annotation does not promise
        if given is not None:
            if isinstance(given, str) or not all(isinstance(b, str) for b in given):
                raise ValueError(f"ScreeningRules: browsers is a list of names, got {given!r}")
            names = tuple(b.lower() for b in given)
            object.__setattr__(self, "browsers", names)
            unknown = [b for b in names if b not in BROWSERS]
            if unknown:
                raise ValueError(f"ScreeningRules: browsers are among {', '.join(BROWSERS)}; got {unknown[0]!r}")
        for name in ("allow_mobile", "require_webassembly"):
            if not isinstance(flag := getattr(self, name), bool):
                raise ValueError(f"ScreeningRules: {name} is True or False, got {flag!r}")
        for name in ("min_width", "min_height"):
            if not whole(pixels := getattr(self, name)) or pixels < 0:
                raise ValueError(f"ScreeningRules: {name} is a whole number of pixels, got {pixels!r}")
        if self.max_rtt_ms is not None and not (number(self.max_rtt_ms) and self.max_rtt_ms > 0):
            raise ValueError(
                f"ScreeningRules: max_rtt_ms is a positive number of milliseconds, got {self.max_rtt_ms!r}"
            )

    def evaluate(self, facts: Mapping[str, Any], user_agent: str, rtt_ms: float | None) -> tuple[str, ...]:
        """The reasons to exclude; empty means the participant passed."""
        reasons = []
        browser = browser_of(user_agent)
        if self.browsers is not None and browser not in self.browsers:
            reasons.append(f"browser:{browser}")
        if not self.allow_mobile and _MOBILE.search(user_agent):
            reasons.append("mobile")
        if facts.get("screen_width", 0) < self.min_width or facts.get("screen_height", 0) < self.min_height:
            reasons.append("screen_too_small")
        if self.require_webassembly and facts.get("webassembly") is not True:
            reasons.append("no_webassembly")
        if self.max_rtt_ms is not None:
            if rtt_ms is None:
                reasons.append("rtt_unmeasured")
            elif rtt_ms > self.max_rtt_ms:
                reasons.append("rtt_too_high")
        return tuple(reasons)

    def describe(self) -> dict[str, Any]:
        return {
            "browsers": list(self.browsers) if self.browsers is not None else None,
            "allow_mobile": self.allow_mobile,
            "min_width": self.min_width,
            "min_height": self.min_height,
            "require_webassembly": self.require_webassembly,
            "max_rtt_ms": self.max_rtt_ms,
        }


@dataclass(frozen=True)
class Experiment:
    """A whole study: a StartScene first, an EndScene last, anything in between."""

    name: str
    scenes: Sequence[Node]  # kept as a tuple
    screening: ScreeningRules = field(default_factory=ScreeningRules)
    # every participant's plan holds the same few `Placed` (immutable): one each, not one per participant
    _placed: dict[tuple[str, int], Placed] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Experiment: the name is non-empty text (it labels the study's data), got {self.name!r}")
        if not isinstance(self.screening, ScreeningRules):
            raise TypeError(f"experiment {self.name!r}: screening must be a ScreeningRules, got {self.screening!r}")
        object.__setattr__(self, "scenes", tuple(self.scenes))
        for node in self.scenes:
            for leaf in _leaves(node) if isinstance(node, (*SCENES, *WRAPPERS)) else [node]:
                if not isinstance(leaf, SCENES):
                    raise TypeError(f"experiment {self.name!r}: {leaf!r} is not a scene or a scene wrapper")
        if (
            len(self.scenes) < 2
            or not isinstance(self.scenes[0], StartScene)
            or not isinstance(self.scenes[-1], EndScene)
        ):
            raise ValueError(f"experiment {self.name!r} must begin with a StartScene and end with an EndScene")
        leaves = list(self.leaves())
        if sum(isinstance(s, StartScene) for s in leaves) != 1 or sum(isinstance(s, EndScene) for s in leaves) != 1:
            raise ValueError(f"experiment {self.name!r} must have exactly one StartScene and one EndScene")
        for leaf in leaves:
            if not isinstance(leaf.scene_id, str) or not leaf.scene_id:
                raise ValueError(f"experiment {self.name!r}: scene ids are non-empty text, got {leaf.scene_id!r}")
            if not isinstance(getattr(leaf, "html", ""), str):
                raise ValueError(f"experiment {self.name!r}: scene {leaf.scene_id!r}: html must be text")
        ids = [s.scene_id for s in leaves]
        duplicates = sorted({i for i in ids if ids.count(i) > 1 and not _same_scene(leaves, i)})
        if duplicates:
            raise ValueError(f"experiment {self.name!r}: scene ids used by different scenes: {', '.join(duplicates)}")

    def leaves(self) -> Iterator[Scene]:
        """Every scene the experiment can show, wrapped ones included, each once per mention."""
        for node in self.scenes:
            yield from _leaves(node)

    @cached_property
    def pyodide_config(self) -> dict[str, Any]:
        """What the page must preload, read from every scene without unfolding any wrapper."""
        games = [s for s in self.leaves() if isinstance(s, GymScene) and s.run_through_pyodide]
        packages = sorted({p for g in games for p in g.packages_to_install})
        return {"needs_pyodide": bool(games), "packages_to_install": packages}

    @staticmethod
    @lru_cache(maxsize=64)
    def episode_seeds(seed: int, index: int, episodes: int) -> tuple[int, ...]:
        """The seeds a game scene resets its episodes with: derived from the participant's recorded seed, so an
        episode can be replayed offline. Kept for a moment: a scene's record and its message each ask for them,
        and seeding a generator from text costs more than the rest of the scene's start."""
        rng = random.Random(f"{seed}:{index}")
        return tuple(rng.randrange(2**31) for _ in range(episodes))

    @cached_property
    def _one_order(self) -> tuple[Placed, ...] | None:
        """With no scene shuffled or repeated at random, every participant gets the one order: made once."""
        return None if any(isinstance(node, WRAPPERS) for node in self.scenes) else self._plan(0)

    def plan(self, seed: int) -> tuple[Placed, ...]:
        """This participant's scene order; the same seed always gives the same order."""
        return self._plan(seed) if self._one_order is None else self._one_order

    def _plan(self, seed: int) -> tuple[Placed, ...]:
        rng = random.Random(seed)
        scenes = [scene for node in self.scenes for scene in _unfold(node, rng)]
        seen: dict[str, int] = {}
        placed = []
        for scene in scenes:
            seen[scene.scene_id] = seen.get(scene.scene_id, 0) + 1
            n = seen[scene.scene_id]
            instance_id = scene.scene_id if n == 1 else f"{scene.scene_id}#{n}"
            shared = self._placed.get((instance_id, id(scene)))
            if shared is None:
                shared = self._placed[instance_id, id(scene)] = Placed(instance_id, scene)
            placed.append(shared)
        return tuple(placed)

    @cached_property
    def screening_shown(self) -> dict[str, Any]:
        """The screening rules as every participant's `experiment_config` shows them: one map, shared, never changed."""
        return self.screening.describe()

    def describe(self) -> dict[str, Any]:
        """The definition as plain data, stored with the participants' records."""
        return {
            "name": self.name,
            "scenes": [_describe(n) for n in self.scenes],
            "screening": self.screening.describe(),
        }


def _same_scene(leaves: list[Scene], scene_id: str) -> bool:
    return len({id(s) for s in leaves if s.scene_id == scene_id}) == 1


def _describe(node: Node) -> dict[str, Any]:
    if isinstance(node, RandomizeOrder):
        return {"randomize_order": [_describe(n) for n in node.scenes], "keep_n": node.keep_n}
    if isinstance(node, RepeatScene):
        return {"repeat": _describe(node.scene), "times": node.times}
    return {"scene_id": node.scene_id, "scene_type": node.scene_type, **node.payload()}
