"""Recorded sessions as replayable traces: pure data, shared by the asyncio CLI and the Locust user.

A trace is the client side of one recorded session: each message the participant
sent, when (seconds after the first), and how many server messages had arrived
before it, since the participant was reacting to them. The server side becomes
the expectation: the sequence of states, scene types and error codes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from server.records import read_session
from server.store import Reader

SKIPPED_CLIENT_TYPES = frozenset({"ack"})
"""Recorded acknowledgements are not replayed: the replayer acknowledges what it receives itself."""
MATCH_CLIENT_TYPES = frozenset({"match_ready", "input", "state_hash"})
"""A page's part in a match: played live in lockstep with the recorded actions, not replayed at recorded times."""
MATCH_SERVER_TYPES = frozenset({"match", "frame", "partner_status", "match_end"})
"""What the match sends: its timing and partners are the replay's own, so none of it is compared."""
MATCH_REFUSALS = frozenset({"frame_closed", "frame_ahead", "not_your_agent"})


def of_match(message: dict[str, Any]) -> bool:
    """A server message about the match: one of its own, or a refusal of a page's match message (an input that
    came after its frame closed, or after the match ended), which depends on the timing of this very run."""
    kind = message.get("type")
    if kind in MATCH_SERVER_TYPES:
        return True
    if kind != "error":
        return False
    text = str(message.get("message", ""))
    return message.get("code") in MATCH_REFUSALS or text.startswith(tuple(MATCH_CLIENT_TYPES))


@dataclass(frozen=True)
class Step:
    """One client message: sent `offset` seconds into the session, once `after` server messages have arrived."""

    offset: float
    message: dict[str, Any] | bytes | str
    after: int
    replies: int  # server messages that answered it in the recording (0: nothing to time)

    @property
    def label(self) -> str:
        return self.message.get("type", "?") if isinstance(self.message, dict) else "raw"


@dataclass(frozen=True)
class Expect:
    """What a server message must be for the replay to be on track."""

    type: str
    key: str | None  # the state, the scene type or the error code

    @classmethod
    def of(cls, message: dict[str, Any]) -> Expect:
        kind = message.get("type")
        key = {"state": "state", "activate_scene": "scene_type", "error": "code"}.get(kind)  # type: ignore[arg-type]
        return cls(str(kind), message.get(key) if key else None)


@dataclass(frozen=True)
class MatchPart:
    """One multiplayer game in a recorded session: the match it was, its group size and the player's actions."""

    match_id: str
    scene_id: str
    players: int  # the group size (the game's human agents)
    actions: tuple[Any, ...]  # the recorded input for frames 1, 2, ... (the first again where one is missing)
    frames: int  # the frames the player reported in its game over (0: it never reported)


@dataclass(frozen=True)
class Trace:
    source: str
    steps: tuple[Step, ...]
    expected: tuple[Expect, ...]
    matches: tuple[MatchPart, ...] = ()
    experiment: str | None = None  # the recorded session's experiment, where its `begin` names it

    @property
    def group(self) -> tuple[str, int] | None:
        """The recorded match that this session must be replayed together with (its id, its size), if any."""
        return (self.matches[0].match_id, self.matches[0].players) if self.matches else None

    def as_echo(self) -> Trace:
        """The same client messages against an echo server: each is answered by itself."""
        steps = tuple(Step(s.offset, s.message, i, 1) for i, s in enumerate(self.steps))
        expected = tuple(Expect(s.label, None) for s in self.steps)
        return Trace(self.source + " (echo)", steps, expected)


class TraceError(Exception):
    """A trace path that cannot be replayed; the message names it."""


def from_records(records: Iterable[dict[str, Any]], source: str = "") -> Trace:
    """The client side of one recorded session, with what the server answered as expectations."""
    steps: list[Step] = []
    expected: list[Expect] = []
    start: float | None = None
    pending: list[tuple[float, dict[str, Any] | bytes | str, int]] = []
    games: list[dict[str, Any]] = []  # the matches played, as they were announced, with the inputs sent in them
    session = read_session(source, records)
    for frame in session.frames:
        if start is None:
            start = frame["t"]
        message = frame.get("message")
        if message is None:
            message = _raw(frame.get("raw", b""))
        kind = message.get("type") if isinstance(message, dict) else None
        if frame.get("dir") == "in":
            if kind in SKIPPED_CLIENT_TYPES:
                continue
            if kind in MATCH_CLIENT_TYPES:
                assert isinstance(message, dict)
                if kind == "input" and games and isinstance(message.get("f"), int):
                    games[-1]["inputs"].setdefault(message["f"], message.get("action"))
                continue
            if kind == "game_over" and games and isinstance(message, dict) and "frames" in message:
                games[-1]["frames"] = message["frames"] if isinstance(message["frames"], int) else 0
            pending.append((frame["t"] - start, message, len(expected)))
        elif isinstance(message, dict):
            if kind == "match" and (not games or games[-1]["match_id"] != message.get("match_id")):
                games.append({"message": message, "match_id": str(message.get("match_id")), "inputs": {}, "frames": 0})
            if of_match(message):
                continue
            expected.append(Expect.of(message))
    for i, (offset, message, after) in enumerate(pending):
        until = pending[i + 1][2] if i + 1 < len(pending) else len(expected)
        steps.append(Step(offset, message, after, until - after))
    experiment = session.begin.experiment if session.begin is not None else None
    return Trace(source, tuple(steps), tuple(expected), tuple(_match_part(g) for g in games), experiment)


def _match_part(game: dict[str, Any]) -> MatchPart:
    announced = game["message"]
    agents = announced.get("agents") if isinstance(announced.get("agents"), dict) else {}
    humans = sum(1 for a in agents.values() if isinstance(a, dict) and a.get("kind") == "human")
    inputs: dict[int, Any] = game["inputs"]
    first = inputs[min(inputs)] if inputs else None
    actions = tuple(inputs.get(f, first) for f in range(1, max(inputs, default=0) + 1))
    return MatchPart(game["match_id"], str(announced.get("scene_id", "")), max(humans, 1), actions, game["frames"])


def _raw(raw: bytes | str) -> dict[str, Any] | bytes | str:
    """A refused frame: replayed as the same map if it was msgpack, else as the same bytes or text."""
    if isinstance(raw, str):
        return raw
    try:
        message = msgpack.unpackb(raw, raw=False)
    except Exception:  # msgpack raises several unrelated types for broken input
        return raw
    return message if isinstance(message, dict) else raw


def trace_files(paths: Iterable[os.PathLike[str] | str]) -> list[Path]:
    """Session files named directly, or found in a directory (a data directory's `sessions/` included)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            sessions = path / "sessions"
            found = sorted((sessions if sessions.is_dir() else path).glob("*.msgpack"))
            files.extend(f for f in found if f.name != "study.msgpack")
        elif path.is_file():
            files.append(path)
        else:
            raise TraceError(f"trace not found: {path}")
    return files


def load(paths: Iterable[os.PathLike[str] | str], notes: list[str] | None = None) -> list[Trace]:
    """Every replayable trace under `paths`; sessions that never sent a message are left out. Given `notes`, what
    a load tester should know about the files is added to it: those left out, and those with torn records."""
    paths = list(paths)
    files = trace_files(paths)
    named = ", ".join(str(p) for p in paths)
    if not files:
        raise TraceError(f"no session files (*.msgpack) in {named}: give a data directory written by python -m server")
    traces = []
    for file in files:
        reader = Reader(file)
        trace = from_records(reader, str(file))
        if trace.steps:
            traces.append(trace)
        elif notes is not None:
            notes.append(f"{file}: left out, it holds no message a participant sent")
        if reader.skipped and notes is not None:
            notes.append(f"{file}: {reader.skipped} bytes belong to no whole record (a write cut short, or damage)")
    if not traces:
        raise TraceError(
            f"no recorded session in {named}: none of its {len(files)} file(s) holds a message a participant sent "
            "(session files are a data directory's sessions/*.msgpack, written by python -m server)"
        )
    return traces


def groups(traces: list[Trace]) -> list[list[int]]:
    """The traces as groups replayed together: the sessions of one recorded match (padded to its size with its
    own members again, when not all of them were recorded), and every other trace on its own."""
    by_match: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}
    out: list[list[int]] = []
    for i, trace in enumerate(traces):
        group = trace.group
        if group is None:
            out.append([i])
            continue
        if group[0] not in by_match:
            by_match[group[0]] = []
            out.append(by_match[group[0]])
        by_match[group[0]].append(i)
        sizes[group[0]] = group[1]
    for match_id, members in by_match.items():
        recorded = list(members)
        while len(members) < sizes[match_id]:
            members.append(recorded[len(members) % len(recorded)])
        del members[sizes[match_id] :]
    return out
