"""A tiny grid world with a Gym-style interface, small enough to read in a minute.

The agent starts in the top-left corner and must reach the goal in the bottom-right;
each move costs 0.01 and reaching the goal pays 1.
"""

from __future__ import annotations

ACTIONS = {0: (0, -1), 1: (1, 0), 2: (0, 1), 3: (-1, 0)}  # up, right, down, left


class GridWorld:
    """reset() -> observation; step(action) -> (observation, reward, done, info)."""

    def __init__(self, width: int = 5, height: int = 5, walls: tuple[tuple[int, int], ...] = ((2, 1), (2, 2))):
        self.width, self.height = width, height
        self.walls = set(walls)
        self.goal = (width - 1, height - 1)
        self.agent = (0, 0)
        self.steps = 0

    def reset(self) -> dict:
        self.agent, self.steps = (0, 0), 0
        return self.observation()

    def observation(self) -> dict:
        return {
            "agent": list(self.agent),
            "goal": list(self.goal),
            "walls": sorted(map(list, self.walls)),
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
        }

    def step(self, action: int) -> tuple[dict, float, bool, dict]:
        dx, dy = ACTIONS[int(action)]
        x, y = self.agent[0] + dx, self.agent[1] + dy
        if 0 <= x < self.width and 0 <= y < self.height and (x, y) not in self.walls:
            self.agent = (x, y)
        self.steps += 1
        done = self.agent == self.goal
        return self.observation(), (1.0 if done else -0.01), done, {}
