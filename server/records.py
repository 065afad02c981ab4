"""One session's records read in one pass: who took part, their path, screening, preload, scenes and frames;
and one match's canonical log read the same way (`read_match`).

The admin page's participant view, the export's participants, matches and frames tables and the replay
traces all start from these summaries, so a record kind is interpreted in one place only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from statemachine import FINAL_STATES

_STAMP = ("kind", "t", "wall")
PRELOAD_FIELDS = ("status", "stage", "package", "done", "total", "elapsed_ms", "error")
"""What a page may say in a preload report (`protocol`'s schema), in the order people read them."""


@dataclass(frozen=True)
class Begin:
    """Who the participant is and what they were given, as the session began."""

    participant_id: str | None
    params: dict[str, Any] | None
    seed: int | None
    order: list[str] | None
    user_agent: str | None
    t: float | None
    wall: float | None
    experiment: str | None = None  # its name; sessions recorded before 2026-12-07 do not say


@dataclass(frozen=True)
class Transition:
    event: str | None
    source: str | None
    dest: str | None
    t: float | None
    wall: float | None


@dataclass(frozen=True)
class Screening:
    facts: dict[str, Any] | None
    rtt_ms: float | None
    verdict: list[str] | None
    t: float | None
    wall: float | None


@dataclass(frozen=True)
class PreloadReport:
    """One preload report as the page sent it (status, stage, package, done, total, elapsed_ms, error)."""

    report: dict[str, Any]
    t: float | None
    wall: float | None


@dataclass(frozen=True)
class SceneShown:
    scene_id: str | None
    scene_type: str | None
    index: int | None
    t: float | None
    wall: float | None


@dataclass(frozen=True)
class GameOver:
    """How one game ended, as the page summed it up, and whether every step it reports reached the server."""

    scene_id: str | None
    summary: dict[str, Any]
    check: dict[str, Any] | None
    t: float | None
    wall: float | None

    @property
    def failed(self) -> bool:
        """The game could not run to its end in the page (its environment, a partner or Python failed)."""
        return self.summary.get("failed") is True


@dataclass(frozen=True)
class Closed:
    outcome: str | None
    state: str | None
    t: float | None
    wall: float | None


@dataclass(frozen=True)
class Joined:
    """A multiplayer match the participant was matched into: which scene, which match, which agent they played."""

    scene_id: str | None
    match_id: str | None
    agent: str | None
    t: float | None
    wall: float | None


@dataclass(frozen=True)
class Unmatched:
    """Nobody came in time for a multiplayer scene; `then` is what the scene's on_no_match did (skip, bot, end)."""

    scene_id: str | None
    then: str | None
    t: float | None
    wall: float | None


@dataclass
class SessionRecords:
    """What one session's records say, in the order they were written; `None` where a record never came."""

    session_id: str
    count: int = 0
    begin: Begin | None = None
    path: list[Transition] = field(default_factory=list)
    screening: Screening | None = None  # the last one: a timeout's verdict replaces nothing earlier
    preload: list[PreloadReport] = field(default_factory=list)
    scenes_shown: list[SceneShown] = field(default_factory=list)
    game_events: int = 0
    steps: int = 0  # game steps received, over every batch
    games: list[GameOver] = field(default_factory=list)
    matches: list[Joined] = field(default_factory=list)
    unmatched: list[Unmatched] = field(default_factory=list)
    decided: str | None = None  # the outcome the lifecycle decided, once it did
    frames: list[dict[str, Any]] = field(default_factory=list)
    frames_in: int = 0
    frames_out: int = 0
    closed: Closed | None = None
    first_t: float | None = None  # the first record that has a time
    first_wall: float | None = None
    last_t: float | None = None  # the last record's
    last_wall: float | None = None  # the last wall-clock time written

    @property
    def final_state(self) -> str:
        """The top-level state the last transition entered (`connected` before any)."""
        return str(self.path[-1].dest).split(".", 1)[0] if self.path else "connected"

    @property
    def outcome(self) -> str:
        """How the session ended; one not closed yet is its final state, or `unfinished` if it never reached one."""
        if self.closed is not None and self.closed.outcome:
            return self.closed.outcome
        if self.decided:
            return self.decided
        return self.final_state if self.final_state in FINAL_STATES else "unfinished"

    @property
    def duration_s(self) -> float | None:
        """From the first record to the last."""
        if self.first_t is None or not self.count:
            return None
        return (self.first_t if self.last_t is None else self.last_t) - self.first_t

    @property
    def time_to_ready_s(self) -> float | None:
        """From the first record to the first time the participant was `ready`."""
        if self.first_t is None:
            return None
        return next((step.t - self.first_t for step in self.path if step.dest == "ready" and step.t is not None), None)


def read_session(session_id: str, records: Iterable[dict[str, Any]]) -> SessionRecords:
    """The summary of one session's records, read once, in order."""
    out = SessionRecords(session_id)
    for r in records:
        out.count += 1
        kind, t, wall = r.get("kind"), r.get("t"), r.get("wall")
        if t is not None and out.first_t is None:
            out.first_t, out.first_wall = t, wall
        if wall is not None:
            out.last_wall = wall
        out.last_t = t
        if kind == "frame":
            out.frames.append(r)
            if r.get("dir") == "in":
                out.frames_in += 1
            else:
                out.frames_out += 1
        elif kind == "transition":
            out.path.append(Transition(r.get("event"), r.get("source"), r.get("dest"), t, wall))
        elif kind == "game_event":
            out.game_events += 1
        elif kind == "steps":
            out.steps += len(r.get("steps") or [])
        elif kind == "game_over":
            out.games.append(GameOver(r.get("scene_id"), r.get("data") or {}, r.get("check"), t, wall))
        elif kind == "outcome":
            out.decided = r.get("outcome")
        elif kind == "begin":
            out.begin = Begin(
                r.get("participant_id"),
                r.get("params"),
                r.get("seed"),
                r.get("order"),
                r.get("user_agent"),
                t,
                wall,
                r.get("experiment"),
            )
        elif kind == "screening":
            out.screening = Screening(r.get("facts"), r.get("rtt_ms"), r.get("verdict"), t, wall)
        elif kind == "preload":
            out.preload.append(PreloadReport({k: v for k, v in r.items() if k not in _STAMP}, t, wall))
        elif kind == "scene":
            out.scenes_shown.append(SceneShown(r.get("scene_id"), r.get("scene_type"), r.get("index"), t, wall))
        elif kind == "closed":
            out.closed = Closed(r.get("outcome"), r.get("state"), t, wall)
        elif kind == "match":
            out.matches.append(Joined(r.get("scene_id"), r.get("match_id"), r.get("agent"), t, wall))
        elif kind == "unmatched":
            out.unmatched.append(Unmatched(r.get("scene_id"), r.get("then"), t, wall))
    return out


@dataclass
class MatchRecords:
    """What one match's canonical log (`data/matches/<match_id>.msgpack`, server/matches.py) says, in order."""

    match_id: str
    count: int = 0
    start: dict[str, Any] | None = None  # the `match` record: scene, environment, participants, agents, seeds, ...
    frames: list[dict[str, Any]] = field(default_factory=list)  # `frame` records: f, actions, filled, bots
    hashes: list[dict[str, Any]] = field(default_factory=list)  # `hash` records: agent, f, hash
    presence: list[dict[str, Any]] = field(default_factory=list)  # agent, status (reconnecting, connected, bot, left)
    reports: list[dict[str, Any]] = field(default_factory=list)  # agent, frames: a page's game over
    desyncs: list[dict[str, Any]] = field(default_factory=list)  # f, hashes: two pages' hashes differed
    path: list[Transition] = field(default_factory=list)
    end: dict[str, Any] | None = None  # the `end` record: outcome, frames, filled
    first_wall: float | None = None
    last_wall: float | None = None

    @property
    def outcome(self) -> str:
        """completed, partner_left, desync or start_failed; `unfinished` when the log has no end (a crash)."""
        return str(self.end.get("outcome")) if self.end is not None else "unfinished"

    @property
    def last_frame(self) -> int:
        """The match's last frame: the one every page reported (completed), else the last the server closed."""
        if self.end is not None and isinstance(self.end.get("frames"), int):
            return int(self.end["frames"])
        return max((int(r["f"]) for r in self.frames if isinstance(r.get("f"), int)), default=0)

    @property
    def desync_f(self) -> int | None:
        return self.desyncs[0].get("f") if self.desyncs else None

    def bot_from(self) -> dict[str, int]:
        """Each human slot a bot played, from the first frame it did."""
        out: dict[str, int] = {}
        for frame in self.frames:
            for agent in frame.get("bots") or []:
                out.setdefault(str(agent), frame["f"])
        return out


def read_match(match_id: str, records: Iterable[dict[str, Any]]) -> MatchRecords:
    """The summary of one match's log, read once, in order; records of kinds it does not know are counted only."""
    out = MatchRecords(match_id)
    for r in records:
        out.count += 1
        kind, wall = r.get("kind"), r.get("wall")
        if wall is not None:
            out.first_wall = wall if out.first_wall is None else out.first_wall
            out.last_wall = wall
        if kind == "frame" and isinstance(r.get("f"), int) and isinstance(r.get("actions"), dict):
            out.frames.append(r)
        elif kind == "hash":
            out.hashes.append(r)
        elif kind == "match":
            out.start = r
        elif kind == "presence":
            out.presence.append(r)
        elif kind == "report":
            out.reports.append(r)
        elif kind == "desync":
            out.desyncs.append(r)
        elif kind == "transition":
            out.path.append(Transition(r.get("event"), r.get("source"), r.get("dest"), r.get("t"), wall))
        elif kind == "end":
            out.end = r
    return out
