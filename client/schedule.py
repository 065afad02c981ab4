"""When each replayed session starts and each message is due: pure arithmetic, no clocks, no I/O."""

from __future__ import annotations

import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class Planned:
    index: int
    trace: int  # which trace this session replays
    offset: float  # seconds after the run starts that it is due to connect
    group: int = -1  # sessions of one group start together, to be matched together (-1: on its own)


def plan(sessions: int, traces: int, ramp: float) -> list[Planned]:
    """`sessions` sessions over the traces in turn, `ramp` new ones per second (0: all due at once)."""
    if traces < 1:
        raise ValueError("no traces to replay")
    return [Planned(i, i % traces, i / ramp if ramp > 0 else 0.0) for i in range(sessions)]


def run_id() -> str:
    return secrets.token_hex(3)


def participant_id(run: str, index: int) -> str:
    """A fresh id per replayed session, so a server that refuses repeat participants still takes them."""
    return f"replay-{run}-{index}"


def due(start: float, offset: float, speed: float, ready_at: float) -> float:
    """When a message is due: its recorded offset scaled by `speed` (0: as soon as what it answers has arrived)."""
    return start + offset / speed if speed > 0 else ready_at


def plan_groups(sessions: int, groups: list[list[int]], ramp: float) -> list[Planned]:
    """At least `sessions` sessions, whole groups of traces in turn; a group's members are due together, and
    `ramp` new groups start per second (0: all at once). A single-player trace is a group of one."""
    if not groups or not all(groups):
        raise ValueError("no traces to replay")
    out: list[Planned] = []
    number = 0
    while len(out) < sessions:
        members = groups[number % len(groups)]
        offset = number / ramp if ramp > 0 else 0.0
        single = len(members) == 1
        out += [Planned(len(out) + i, trace, offset, -1 if single else number) for i, trace in enumerate(members)]
        number += 1
    return out
