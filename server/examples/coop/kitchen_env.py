"""Kitchen: two chefs on a 6×6 grid walk to the same pass; the episode ends when both stand on it.

The PettingZoo parallel API's shape without importing it: `reset(seed) -> (observations, infos)` and
`step({agent: action}) -> (observations, rewards, terminations, truncations, infos)`, all dicts by agent id.
Actions: 0 up, 1 down, 2 left, 3 right, 4 stay. Each step costs both chefs 0.01; both on the pass pays each 1.
Whole-number positions and the pass placed only from the seed: every browser and CPython play the same game
from the same seed and actions, which is what a multiplayer game's lockstep relies on.
"""

from __future__ import annotations

import random
from typing import Any

SIZE, CELL = 6, 40
AGENTS = ("chef_0", "chef_1")
MOVES = ((0, -1), (0, 1), (-1, 0), (1, 0), (0, 0))
COLOURS = {"chef_0": "#2a9d8f", "chef_1": "#e76f51"}
STARTS = {"chef_0": (0, 0), "chef_1": (SIZE - 1, SIZE - 1)}


class ActionSpace:
    """What a RandomPolicy reads: how many actions there are."""

    n = len(MOVES)


class Kitchen:
    possible_agents = AGENTS

    def __init__(self, max_steps: int = 60) -> None:
        self.max_steps = max_steps
        self.positions = dict(STARTS)
        self.goal = (SIZE // 2, SIZE // 2)
        self.steps = 0

    def action_space(self, agent: str) -> ActionSpace:
        return ActionSpace()

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, list[int]], dict[str, Any]]:
        rng = random.Random(seed)
        self.positions = dict(STARTS)
        free = [(x, y) for x in range(SIZE) for y in range(SIZE) if (x, y) not in STARTS.values()]
        self.goal = rng.choice(free)
        self.steps = 0
        return self.observations(), {agent: {} for agent in AGENTS}

    def step(self, actions: dict[str, int]) -> tuple[dict[str, Any], ...]:
        for agent in AGENTS:
            dx, dy = MOVES[int(actions[agent])]
            x, y = self.positions[agent]
            self.positions[agent] = (min(max(x + dx, 0), SIZE - 1), min(max(y + dy, 0), SIZE - 1))
        self.steps += 1
        done = all(position == self.goal for position in self.positions.values())
        cut = not done and self.steps >= self.max_steps
        reward = (1.0 if done else 0.0) - 0.01
        return (
            self.observations(),
            {agent: reward for agent in AGENTS},
            {agent: done for agent in AGENTS},
            {agent: cut for agent in AGENTS},
            {agent: {"on_pass": self.positions[agent] == self.goal} for agent in AGENTS},
        )

    def observations(self) -> dict[str, list[int]]:
        """Each chef sees its own cell, its partner's and the pass's."""
        out = {}
        for agent in AGENTS:
            partner = AGENTS[1 - AGENTS.index(agent)]
            out[agent] = [*self.positions[agent], *self.positions[partner], *self.goal]
        return out

    def render(self) -> dict[str, Any]:
        shapes: list[dict[str, Any]] = [
            {"kind": "rect", "x": x * CELL, "y": y * CELL, "w": CELL, "h": CELL, "stroke": "#ddd"}
            for x in range(SIZE)
            for y in range(SIZE)
        ]
        gx, gy = self.goal
        shapes.append({"kind": "rect", "x": gx * CELL + 2, "y": gy * CELL + 2, "w": CELL - 4, "h": CELL - 4,
                       "fill": "#e9c46a"})  # fmt: skip
        for index, (agent, (x, y)) in enumerate(self.positions.items()):
            inset = 6 + 6 * index  # the second chef drawn smaller, so both show on one cell
            shapes.append({"kind": "rect", "x": x * CELL + inset, "y": y * CELL + inset, "w": CELL - 2 * inset,
                           "h": CELL - 2 * inset, "fill": COLOURS[agent]})  # fmt: skip
        shapes.append({"kind": "text", "x": 6, "y": SIZE * CELL + 16, "text": f"step {self.steps}/{self.max_steps}"})
        return {"width": SIZE * CELL, "height": SIZE * CELL + 28, "background": "#fff", "shapes": shapes}


def toward_pass(observation: list[int], agent_id: str, rng: random.Random) -> int:
    """The stand-in partner: a step toward the pass along the longer axis, ties broken with the seeded `rng`."""
    x, y, _, _, gx, gy = observation
    dx, dy = gx - x, gy - y
    if dx == 0 and dy == 0:
        return 4
    horizontal, vertical = (3 if dx > 0 else 2), (1 if dy > 0 else 0)
    if abs(dx) == abs(dy):
        return rng.choice((horizontal, vertical))
    return horizontal if abs(dx) > abs(dy) else vertical


def make(**kwargs: Any) -> Kitchen:
    """The factory the scene names (`kitchen_env:make`)."""
    return Kitchen(**kwargs)
