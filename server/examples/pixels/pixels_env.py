"""Light the pixels: steer a cursor over an 8×8 board drawn as a 32×32 RGB image and light the dim targets.

Actions: 0 stay, 1 up, 2 right, 3 down, 4 left. Stepping onto a dim target lights it (+1); lighting
them all ends the episode (terminated), and it is cut short (truncated) after `steps` steps, 20 by
default. Where the targets lie comes only from the seed given to reset().
"""

from __future__ import annotations

import random
from typing import Any

BOARD, CELL = 8, 4
MOVES = ((0, 0), (0, -1), (1, 0), (0, 1), (-1, 0))
BLACK, DIM, LIT, CURSOR = (16, 16, 24), (90, 30, 30), (255, 210, 60), (230, 230, 255)


class Pixels:
    """Renders plain nested lists (rows of [r, g, b]), the image format an environment without numpy returns."""

    def __init__(self, targets: int = 6, steps: int = 20) -> None:
        self.n_targets, self.max_steps = targets, steps
        self.cursor = (0, 0)
        self.targets: set[tuple[int, int]] = set()
        self.lit: set[tuple[int, int]] = set()
        self.steps = 0

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        rng = random.Random(seed)
        self.cursor = (BOARD // 2, BOARD // 2)
        cells = [(x, y) for y in range(BOARD) for x in range(BOARD) if (x, y) != self.cursor]
        self.targets = set(rng.sample(cells, self.n_targets))
        self.lit, self.steps = set(), 0
        return self.observation(), {}

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        dx, dy = MOVES[int(action)]
        self.cursor = (min(max(self.cursor[0] + dx, 0), BOARD - 1), min(max(self.cursor[1] + dy, 0), BOARD - 1))
        self.steps += 1
        reward = 0.0
        if self.cursor in self.targets - self.lit:
            self.lit.add(self.cursor)
            reward = 1.0
        terminated = self.lit == self.targets
        truncated = not terminated and self.steps >= self.max_steps
        return self.observation(), reward, terminated, truncated, {"lit": len(self.lit)}

    def observation(self) -> dict[str, Any]:
        return {
            "cursor": list(self.cursor),
            "dim": sorted(map(list, self.targets - self.lit)),
            "lit": sorted(map(list, self.lit)),
            "steps": self.steps,
        }

    def render(self) -> list[list[list[int]]]:
        colours = {cell: DIM for cell in self.targets} | {cell: LIT for cell in self.lit} | {self.cursor: CURSOR}
        return [
            [list(colours.get((px // CELL, py // CELL), BLACK)) for px in range(BOARD * CELL)]
            for py in range(BOARD * CELL)
        ]


def make(**kwargs: Any) -> Pixels:
    """The factory the scene names (`pixels_env:make`); `env_kwargs` arrive here."""
    return Pixels(**kwargs)
