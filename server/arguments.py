"""Command-line value types shared by `python -m server` and `python -m client`: each names what it wants.

argparse reports a plain ValueError as "invalid _positive value"; these raise its ArgumentTypeError instead, and
refuse `nan` and `inf`, which `float` reads and every comparison lets through."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(text: str, wanted: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
    return value


def positive(text: str) -> float:
    """Seconds, rates and intervals: a finite number above 0."""
    value = _number(text, "a positive number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def nonnegative(text: str) -> float:
    """A finite number of 0 or more (0 meaning none or as fast as possible, as the option says)."""
    value = _number(text, "a number of 0 or more")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of 0 or more, got {text!r}")
    return value


def whole(low: int, high: int | None = None, wanted: str = "") -> Callable[[str], int]:
    """A whole number from `low` (to `high`); the message names the range."""
    wanted = wanted or (f"a whole number of at least {low}" if high is None else f"a whole number from {low} to {high}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    return parse


port = whole(0, 65535, "a port number from 0 to 65535 (0: any free port)")
"""A port the socket layer takes as given: a larger number would wrap around to another port unnoticed."""
