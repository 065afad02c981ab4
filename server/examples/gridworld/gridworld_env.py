"""A tiny grid world behind the game contract, small enough to read in a minute.

The agent starts in the top-left corner and must reach the goal in the bottom-right; each move
costs 0.01 and reaching the goal pays 1 and ends the episode. Actions: 0 up, 1 right, 2 down, 3 left.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

ACTIONS = ((0, -1), (1, 0), (0, 1), (-1, 0))
CELL = 64


class GridWorld:
    """The same board and rules as the first built-in example; the layout is fixed, so the seed changes nothing."""

    def __init__(self, width: int = 5, height: int = 5, walls: Iterable[Sequence[int]] = ((2, 1), (2, 2))) -> None:
        self.width, self.height = width, height
        self.walls = {(int(x), int(y)) for x, y in walls}
        self.goal = (width - 1, height - 1)
        self.agent = (0, 0)
        self.steps = 0

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        self.agent, self.steps = (0, 0), 0
        return self.observation(), {}

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        dx, dy = ACTIONS[int(action)]
        x, y = self.agent[0] + dx, self.agent[1] + dy
        if 0 <= x < self.width and 0 <= y < self.height and (x, y) not in self.walls:
            self.agent = (x, y)
        self.steps += 1
        at_goal = self.agent == self.goal
        return self.observation(), (1.0 if at_goal else -0.01), at_goal, False, {}

    def observation(self) -> dict[str, Any]:
        return {
            "agent": list(self.agent),
            "goal": list(self.goal),
            "walls": sorted(map(list, self.walls)),
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
        }

    def render(self) -> dict[str, Any]:
        cells = [
            {"kind": "rect", "x": x * CELL, "y": y * CELL, "w": CELL, "h": CELL, "fill": "#f4f4f6", "stroke": "#dde"}
            for y in range(self.height)
            for x in range(self.width)
        ]
        walls = [
            {"kind": "rect", "x": x * CELL, "y": y * CELL, "w": CELL, "h": CELL, "fill": "#556"}
            for x, y in sorted(self.walls)
        ]
        gx, gy = self.goal
        ax, ay = self.agent
        return {
            "width": self.width * CELL,
            "height": self.height * CELL,
            "background": "#fff",
            "shapes": [
                *cells,
                *walls,
                {"kind": "rect", "x": gx * CELL, "y": gy * CELL, "w": CELL, "h": CELL, "fill": "#2a9d4b"},
                {
                    "kind": "rect",
                    "x": ax * CELL + 6,
                    "y": ay * CELL + 6,
                    "w": CELL - 12,
                    "h": CELL - 12,
                    "fill": "#2456d6",
                },
            ],
        }


def make(**kwargs: Any) -> GridWorld:
    """The factory the scene names (`gridworld_env:make`); `env_kwargs` arrive here."""
    return GridWorld(**kwargs)
