"""What a researcher writes to make a game multiplayer: who is matched with whom, and what happens when the
wait is too long or a partner does not come back (docs/multiplayer.md).

Matchmakers are pure: given who waits (arrival time, server-measured round trip, earlier groups) they return
the groups to start. The lobby (server/matches.py) runs them on every arrival and on its own tick.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .agents import Bot, RandomPolicy, number, whole

NO_MATCH = ("skip", "bot", "end")
PARTNER_LOSS = ("bot", "end_scene", "end")


@dataclass(frozen=True)
class Waiter:
    """One participant in the waiting room, as a matchmaker sees them."""

    session_id: str
    participant_id: str
    since: float  # when they joined the queue, on the server's clock (kept across a reconnect)
    rtt_ms: float | None  # the server's own measurement of their connection (a WebSocket ping)
    groups: Mapping[str, str] = field(default_factory=dict)  # scene id -> the match they played it in


class Matchmaker(Protocol):
    """Picks groups of exactly `size` from the waiting room (oldest first is fair); the rest keep waiting."""

    def groups(self, waiting: Sequence[Waiter], size: int) -> list[tuple[Waiter, ...]]: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class FIFO:
    """In order of arrival, as soon as enough have arrived."""

    def groups(self, waiting: Sequence[Waiter], size: int) -> list[tuple[Waiter, ...]]:
        ordered = sorted(waiting, key=lambda w: w.since)
        return [tuple(ordered[i : i + size]) for i in range(0, len(ordered) - size + 1, size)]

    def describe(self) -> dict[str, Any]:
        return {"kind": "fifo"}


@dataclass(frozen=True)
class Latency:
    """In order of arrival, but only groups whose lockstep round trip through the server stays within
    `max_rtt_ms`: the two largest server-measured round trips added (a frame goes up from one, down to the
    other). A participant whose round trip is not measured yet waits for the measurement."""

    max_rtt_ms: float = 150.0

    def __post_init__(self) -> None:
        if not self.max_rtt_ms > 0:
            raise ValueError(f"Latency: max_rtt_ms must be positive, got {self.max_rtt_ms}")

    def groups(self, waiting: Sequence[Waiter], size: int) -> list[tuple[Waiter, ...]]:
        left = sorted((w for w in waiting if w.rtt_ms is not None), key=lambda w: w.since)
        out: list[tuple[Waiter, ...]] = []
        while len(left) >= size:
            group = self._first_group(left, size)
            if group is None:
                break
            out.append(group)
            left = [w for w in left if w not in group]
        return out

    def _first_group(self, left: list[Waiter], size: int) -> tuple[Waiter, ...] | None:
        """The group around the longest-waiting participant that fits, oldest partners first."""
        for anchor in range(len(left)):
            group = [left[anchor]]
            for other in left[anchor + 1 :]:
                if _round_trip([*group, other]) <= self.max_rtt_ms:
                    group.append(other)
                    if len(group) == size:
                        return tuple(group)
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": "latency", "max_rtt_ms": self.max_rtt_ms}


def _round_trip(group: Sequence[Waiter]) -> float:
    rtts = sorted((w.rtt_ms or 0.0 for w in group), reverse=True)
    return sum(rtts[:2])


@dataclass(frozen=True)
class Reunion:
    """The same group as in `previous_scene`: matched once every member of that earlier match waits again.
    Those who played no match there are matched by `fallback` (FIFO by default; None: they wait out)."""

    previous_scene: str
    fallback: Matchmaker | None = FIFO()

    def groups(self, waiting: Sequence[Waiter], size: int) -> list[tuple[Waiter, ...]]:
        earlier: dict[str, list[Waiter]] = {}
        newcomers = []
        for waiter in sorted(waiting, key=lambda w: w.since):
            match_id = waiter.groups.get(self.previous_scene)
            if match_id is None:
                newcomers.append(waiter)
            else:
                earlier.setdefault(match_id, []).append(waiter)
        out = [tuple(group) for group in earlier.values() if len(group) == size]
        if self.fallback is not None:
            out += self.fallback.groups(newcomers, size)
        return out

    def describe(self) -> dict[str, Any]:
        fallback = self.fallback.describe() if self.fallback is not None else None
        return {"kind": "reunion", "previous_scene": self.previous_scene, "fallback": fallback}


@dataclass(frozen=True)
class Multiplayer:
    """A game scene played by as many participants as it has `Human` agents, in lockstep the server sequences."""

    matchmaker: Matchmaker = FIFO()
    wait_timeout_s: float = 180.0
    on_no_match: str = "skip"  # "skip" the game | "bot": play it with `bot` | "end": outcome `unmatched`
    input_delay: int | str = "auto"  # frames between an input and the frame it acts in; "auto": from the RTTs
    reconnect_timeout_s: float = 20.0
    on_partner_loss: str = "bot"  # "bot" takes the empty slot | "end_scene" for everyone | "end": `partner_lost`
    bot: Bot = field(default_factory=lambda: Bot(RandomPolicy()))  # who plays an empty human slot
    hash_every: int = 30  # frames between the pages' state hashes
    start_timeout_s: float = 60.0  # every page must have the game loaded by then
    turn_timeout_s: float = 30.0  # "turn" input: a frame closes when every human has moved, or after this
    end_html: str = "<p>We could not keep a group together for this game. Thank you for your time.</p>"
    end_code: str | None = None  # the completion code of those ended by on_no_match/on_partner_loss="end"

    def __post_init__(self) -> None:
        for name in ("groups", "describe"):
            if not callable(getattr(self.matchmaker, name, None)):
                raise TypeError(f"Multiplayer: matchmaker must have groups() and describe(), got {self.matchmaker!r}")
        if self.on_no_match not in NO_MATCH:
            raise ValueError(f"Multiplayer: on_no_match must be one of {', '.join(NO_MATCH)}, got {self.on_no_match!r}")
        if self.on_partner_loss not in PARTNER_LOSS:
            raise ValueError(
                f"Multiplayer: on_partner_loss must be one of {', '.join(PARTNER_LOSS)}, got {self.on_partner_loss!r}"
            )
        if self.input_delay != "auto" and not (whole(self.input_delay) and 1 <= self.input_delay <= 60):
            # 0 cannot work: frame f is closed by the time the input sent after applying frame f arrives
            raise ValueError(f"Multiplayer: input_delay must be 'auto' or 1-60 frames, got {self.input_delay!r}")
        for name in ("wait_timeout_s", "reconnect_timeout_s", "start_timeout_s", "turn_timeout_s"):
            value = getattr(self, name)
            if not (number(value) and value > 0):
                raise ValueError(f"Multiplayer: {name} must be a positive number of seconds, got {value!r}")
        if self.end_code is not None and not isinstance(self.end_code, str):
            raise ValueError(f"Multiplayer: end_code is text, got {self.end_code!r}")
        if not isinstance(self.end_html, str):
            raise ValueError(f"Multiplayer: end_html is text, got {self.end_html!r}")
        if not (whole(self.hash_every) and self.hash_every >= 1):
            raise ValueError(f"Multiplayer: hash_every must be a positive integer, got {self.hash_every!r}")
        if not isinstance(self.bot, Bot):
            raise TypeError(f"Multiplayer: bot must be a Bot, got {self.bot!r}")

    def describe(self) -> dict[str, Any]:
        return {
            "matchmaker": self.matchmaker.describe(),
            "wait_timeout_s": self.wait_timeout_s,
            "on_no_match": self.on_no_match,
            "input_delay": self.input_delay,
            "reconnect_timeout_s": self.reconnect_timeout_s,
            "on_partner_loss": self.on_partner_loss,
            "hash_every": self.hash_every,
        }
