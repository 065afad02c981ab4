"""Coop: two agents on a 7×7 grid collect stars together; every star either of them reaches pays both.

The PettingZoo parallel API's shape without importing it: `reset(seed) -> (observations, infos)` and
`step({agent: action}) -> (observations, rewards, terminations, truncations, infos)`, all dicts by agent id.
Actions: 0 up, 1 down, 2 left, 3 right, 4 stay. Each agent observes six numbers between 0 and 1: its own
column and row, its partner's, and the star's. Where stars appear comes only from the seed given to reset().
"""

from __future__ import annotations

import random
from typing import Any

SIZE, CELL = 7, 40
AGENTS = ("chef_0", "chef_1")
MOVES = ((0, -1), (0, 1), (-1, 0), (1, 0), (0, 0))
COLOURS = {"chef_0": "#2a9d8f", "chef_1": "#e76f51"}


class ActionSpace:
    """Just what a RandomPolicy reads: how many actions there are."""

    n = len(MOVES)


class Coop:
    """Whole-number positions, so every Python plays the same episode from the same seed and actions."""

    possible_agents = AGENTS

    def __init__(self, stars: int = 5, max_steps: int = 200) -> None:
        self.stars, self.max_steps = stars, max_steps
        self.rng = random.Random(0)
        self.positions = {"chef_0": (0, 0), "chef_1": (SIZE - 1, SIZE - 1)}
        self.star = (SIZE // 2, SIZE // 2)
        self.collected = self.steps = 0

    def action_space(self, agent: str) -> ActionSpace:
        return ActionSpace()

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, list[float]], dict[str, Any]]:
        self.rng = random.Random(seed)
        self.positions = {"chef_0": (0, 0), "chef_1": (SIZE - 1, SIZE - 1)}
        self.collected = self.steps = 0
        self._place_star()
        return self.observations(), {agent: {} for agent in AGENTS}

    def step(self, actions: dict[str, int]) -> tuple[dict[str, Any], ...]:
        for agent in AGENTS:
            dx, dy = MOVES[int(actions[agent])]
            x, y = self.positions[agent]
            self.positions[agent] = (min(max(x + dx, 0), SIZE - 1), min(max(y + dy, 0), SIZE - 1))
        self.steps += 1
        reward = 0.0
        if self.star in self.positions.values():
            self.collected += 1
            reward = 1.0
            self._place_star()
        done = self.collected >= self.stars
        cut = not done and self.steps >= self.max_steps
        infos = {agent: {"collected": self.collected} for agent in AGENTS}
        return (
            self.observations(),
            {agent: reward for agent in AGENTS},
            {agent: done for agent in AGENTS},
            {agent: cut for agent in AGENTS},
            infos,
        )

    def _place_star(self) -> None:
        free = [(x, y) for x in range(SIZE) for y in range(SIZE) if (x, y) not in self.positions.values()]
        self.star = self.rng.choice(free)

    def observations(self) -> dict[str, list[float]]:
        scale = SIZE - 1
        out = {}
        for agent in AGENTS:
            partner = AGENTS[1 - AGENTS.index(agent)]
            cells = (*self.positions[agent], *self.positions[partner], *self.star)
            out[agent] = [c / scale for c in cells]
        return out

    def render(self) -> dict[str, Any]:
        shapes: list[dict[str, Any]] = [
            {"kind": "rect", "x": x * CELL, "y": y * CELL, "w": CELL, "h": CELL, "stroke": "#ddd"}
            for x in range(SIZE)
            for y in range(SIZE)
        ]
        sx, sy = self.star
        shapes.append(
            {"kind": "circle", "x": sx * CELL + CELL / 2, "y": sy * CELL + CELL / 2, "r": 10, "fill": "#e9c46a"}
        )
        for agent, (x, y) in self.positions.items():
            shapes.append({"kind": "rect", "x": x * CELL + 6, "y": y * CELL + 6, "w": CELL - 12, "h": CELL - 12,
                           "fill": COLOURS[agent]})  # fmt: skip
        shapes.append({"kind": "text", "x": 6, "y": SIZE * CELL + 20, "text": f"stars {self.collected}/{self.stars}"})
        return {"width": SIZE * CELL, "height": SIZE * CELL + 28, "background": "#fff", "shapes": shapes}


def make(**kwargs: Any) -> Coop:
    """The factory the scene names (`coop_env:make`)."""
    return Coop(**kwargs)
