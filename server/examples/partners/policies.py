"""Python policies for the coop game, run in the participant's page beside the environment."""

from __future__ import annotations

import random


def greedy(observation: list[float], agent_id: str, rng: random.Random) -> int:
    """Step toward the star along the longer axis; ties are broken with the seeded `rng`, so a seed replays."""
    x, y, _, _, sx, sy = observation
    dx, dy = sx - x, sy - y
    if dx == 0 and dy == 0:
        return 4
    horizontal = 3 if dx > 0 else 2
    vertical = 1 if dy > 0 else 0
    if abs(dx) == abs(dy):
        return rng.choice((horizontal, vertical))
    return horizontal if abs(dx) > abs(dy) else vertical
