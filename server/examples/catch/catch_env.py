"""Catch: move a paddle along the bottom to catch balls falling one at a time, in real time.

Actions: 0 left, 1 stay, 2 right. Each ball caught pays +1 and each ball missed costs 1. An episode
ends (terminated) after `balls` balls, or is cut short (truncated) after `max_steps` steps. Where a
ball falls from and how fast come only from the seed given to reset(), so a seed and the actions
taken replay an episode exactly.
"""

from __future__ import annotations

import random
from typing import Any

WIDTH, HEIGHT = 400, 300
PADDLE_W, PADDLE_H, PADDLE_SPEED = 64, 10, 12
BALL_R = 8
SPEEDS = (5, 6, 7)


class Catch:
    """All positions are whole numbers of the drawing's units, so every Python computes the same episode."""

    def __init__(self, balls: int = 5, max_steps: int = 300) -> None:
        self.balls, self.max_steps = balls, max_steps
        self.rng = random.Random(0)
        self.paddle = (WIDTH - PADDLE_W) // 2
        self.ball = (0, 0)
        self.speed = SPEEDS[0]
        self.caught = self.missed = self.steps = 0

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        self.rng = random.Random(seed)
        self.paddle = (WIDTH - PADDLE_W) // 2
        self.caught = self.missed = self.steps = 0
        self._drop()
        return self.observation(), {}

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        move = (-PADDLE_SPEED, 0, PADDLE_SPEED)[int(action)]
        self.paddle = min(max(self.paddle + move, 0), WIDTH - PADDLE_W)
        x, y = self.ball
        y += self.speed
        self.steps += 1
        reward = 0.0
        if y + BALL_R >= HEIGHT - PADDLE_H:
            caught = self.paddle - BALL_R <= x <= self.paddle + PADDLE_W + BALL_R
            self.caught += caught
            self.missed += not caught
            reward = 1.0 if caught else -1.0
            self._drop()
        else:
            self.ball = (x, y)
        terminated = self.caught + self.missed >= self.balls
        truncated = not terminated and self.steps >= self.max_steps
        return self.observation(), reward, terminated, truncated, {"caught": self.caught, "missed": self.missed}

    def _drop(self) -> None:
        self.ball = (self.rng.randrange(BALL_R, WIDTH - BALL_R), BALL_R)
        self.speed = self.rng.choice(SPEEDS)

    def observation(self) -> dict[str, Any]:
        return {"paddle": self.paddle, "ball": list(self.ball), "speed": self.speed, "balls_left": self.balls_left}

    @property
    def balls_left(self) -> int:
        return self.balls - self.caught - self.missed

    def render(self) -> dict[str, Any]:
        x, y = self.ball
        shapes: list[dict[str, Any]] = [
            {"kind": "rect", "x": self.paddle, "y": HEIGHT - PADDLE_H, "w": PADDLE_W, "h": PADDLE_H, "fill": "#e9c46a"},
            {"kind": "text", "x": 10, "y": 16, "text": f"caught {self.caught}  missed {self.missed}", "fill": "#fff"},
            {
                "kind": "text",
                "x": WIDTH - 10,
                "y": 16,
                "text": f"{self.balls_left} left",
                "fill": "#fff",
                "align": "right",
            },
        ]
        if self.balls_left:
            shapes.insert(0, {"kind": "circle", "x": x, "y": y, "r": BALL_R, "fill": "#f4a261"})
        return {"width": WIDTH, "height": HEIGHT, "background": "#264653", "shapes": shapes}


def make(**kwargs: Any) -> Catch:
    """The factory the scene names (`catch_env:make`); `env_kwargs` arrive here."""
    return Catch(**kwargs)
