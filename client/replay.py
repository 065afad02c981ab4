"""The replay core: one recorded session played against a server, as a state machine with no I/O.

The asyncio CLI and the Locust (gevent) user drive it the same way: `connected`,
then `poll(now)` says what to do (a `Send`, or `Wait` until a time or a message),
`sent_frame`/`received` report what happened. Latency runs from a message's due time,
not from when the client got round to sending it (coordinated omission), and the
client's own lateness is kept apart as scheduling lag.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import msgpack

from server import protocol

from .lockstep import Lockstep, replaying
from .schedule import due
from .trace import Expect, Step, Trace, of_match

ACK_EVERY = 0.2
"""Seconds between acknowledgements, as the page batches them (the first goes at once)."""


@dataclass(frozen=True)
class Send:
    frame: bytes | str
    label: str


@dataclass(frozen=True)
class Wait:
    until: float


def decode(frame: bytes | str) -> dict[str, Any]:
    """A server frame as a map; anything else becomes a map the recording cannot have expected."""
    try:
        message = msgpack.unpackb(frame, raw=False) if isinstance(frame, bytes) else None
    except Exception:  # msgpack raises several unrelated types for broken input
        message = None
    return message if isinstance(message, dict) else {"type": "undecodable"}


class ReplaySession:
    """One replayed participant; `status` ends as ok, diverged, failed or unfinished."""

    def __init__(
        self, trace: Trace, participant_id: str, *, start: float, speed: float = 1.0, timeout: float = 10.0
    ) -> None:
        self.trace = trace
        self.participant_id = participant_id
        self.start = start  # when the session was due to connect
        self.speed = speed
        self.timeout = timeout
        self.status = "unfinished"
        self.divergence: str | None = None
        self.detail = ""
        self.latencies: list[tuple[str, float]] = []
        self.lags: list[float] = []
        self.time_to_ready: float | None = None
        self.sent_count = 0
        self.received_count = 0
        self.token: str | None = None
        self.seen: list[Expect] = []  # every server message so far, as the recording is compared
        self._connected_at = start
        self._arrivals: list[float] = []
        self._next = 0
        self._progress = start
        self._pending: tuple[str, float, int] | None = None  # label, due time, index of the reply it waits for
        self._max_seq: int | None = None
        self._acked = 0
        self._acked_at = float("-inf")
        self.player: Lockstep | None = None  # the match in progress, played live with the recorded actions
        self.played: list[Lockstep] = []
        self._outgoing: deque[dict[str, Any]] = deque()  # what the match's lockstep has to send, in order
        self._played_at: float | None = None  # when the match in progress was played out, or ended

    # -- what the driver reports ---------------------------------------------------------

    def connected(self, now: float) -> None:
        self._connected_at = self._progress = now
        self.latencies.append(("connect", now - self.start))

    def failed(self, reason: str) -> None:
        if self.status == "unfinished":
            self.status, self.divergence, self.detail = "failed", "connect", reason

    def sent_frame(self, now: float) -> None:
        """The frame `poll` returned has gone out (acks are not timed)."""
        self.sent_count += 1

    def received(self, message: dict[str, Any] | None, now: float) -> None:
        """A server message (None: the server closed the connection)."""
        if self.status != "unfinished" or (message is not None and message.get("type") == "received"):
            return  # `received` confirms research data; it is derived, so recordings do not hold it
        if message is None:
            if self._next >= len(self.trace.steps) and self.received_count >= len(self.trace.expected):
                self.status = "ok"
            else:
                self._diverge(
                    "disconnect", f"closed after {self.received_count} of {len(self.trace.expected)} messages"
                )
            return
        seq = message.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            self._max_seq = max(seq, self._max_seq or 0)
        if of_match(message):
            self._progress = now
            return self._in_match(message, now)
        index = self.received_count
        self.received_count += 1
        self._arrivals.append(now)
        self._progress = now
        if message.get("type") == "experiment_config" and isinstance(message.get("session_token"), str):
            self.token = message["session_token"]
            serving = message.get("experiment")
            if self.trace.experiment and serving and serving != self.trace.experiment:
                return self._diverge(
                    "different_experiment",
                    f"recorded with experiment {self.trace.experiment!r}; the server runs {serving!r}",
                )
        got = Expect.of(message)
        self.seen.append(got)
        if message.get("type") == "state" and message.get("state") == "ready" and self.time_to_ready is None:
            self.time_to_ready = now - self.start
        if self._pending is not None and self._pending[2] == index:
            self.latencies.append((self._pending[0], now - self._pending[1]))
            self._pending = None
        if index >= len(self.trace.expected):
            return self._diverge(
                _classify(message, None), f"message {index + 1} beyond the recording: {_brief(message)}"
            )
        expected = self.trace.expected[index]
        if got != expected:
            self._diverge(
                _classify(message, expected),
                f"message {index + 1}: expected {expected.type} {expected.key or ''}, got {_brief(message)}",
            )

    # -- what the driver should do next --------------------------------------------------

    def poll(self, now: float) -> Send | Wait | None:
        if self.status != "unfinished":
            return None
        if self._max_seq is not None and self._max_seq > self._acked and now - self._acked_at >= ACK_EVERY:
            self._acked, self._acked_at = self._max_seq, now
            return Send(protocol.encode({"type": "ack", "seq": self._acked}), "ack")
        if self._outgoing:
            message = self._outgoing.popleft()
            return Send(protocol.encode(message), str(message["type"]))
        steps = self.trace.steps
        if self._next < len(steps):
            step = steps[self._next]
            if self.received_count >= step.after and not self._in_play(step):
                ready_at = self._arrivals[step.after - 1] if step.after else self._connected_at
                if self._ends_match(step) and self._played_at is not None:
                    ready_at = max(ready_at, self._played_at)  # the match's own frames are not this message's wait
                when = due(self.start, step.offset, self.speed, ready_at)
                if now < when:
                    return Wait(when)
                self._next += 1
                self.lags.append(now - max(when, ready_at))
                if step.replies:
                    self._pending = (step.label, when, step.after)
                return Send(self._prepare(step.message), step.label)
        elif self.received_count >= len(self.trace.expected):
            self.status = "ok"
            return None
        deadline = self._progress + self.timeout
        if now >= deadline:
            waiting = f"{step.label} (needs {step.after} replies)" if self._next < len(steps) else "the last replies"
            self._diverge(
                "timeout",
                f"no reply within {self.timeout:g}s; {self.received_count} of "
                f"{len(self.trace.expected)} received, waiting to send {waiting}",
            )
            return None
        return Wait(deadline)

    # -- a multiplayer game: played live, in lockstep, with the recorded actions --------------

    def _in_match(self, message: dict[str, Any], now: float) -> None:
        kind = message["type"]
        if kind == "match" and (self.player is None or self.player.match_id != message.get("match_id")):
            self._played_at = None
            parts = self.trace.matches
            part = parts[min(len(self.played), len(parts) - 1)] if parts else None
            frames = part.frames if part is not None and part.frames > 0 else 10**6
            self.player = Lockstep(frames, replaying(part.actions if part is not None else ()))
            self.played.append(self.player)
        if self.player is None:
            return
        handler = {"match": self.player.on_match, "frame": self.player.on_frame, "match_end": self.player.on_end}
        for out in handler[kind](message) if kind in handler else []:
            if out["type"] != "game_over":  # the recorded game over goes instead, numbered as it was
                self._outgoing.append(out)
        if self.player.done and self._played_at is None:
            self._played_at = now

    def _in_play(self, step: Step) -> bool:
        """A recorded game over waits until the live match has played as many frames (or has ended)."""
        return self._ends_match(step) and (self.player is None or not self.player.done)

    @staticmethod
    def _ends_match(step: Step) -> bool:
        message = step.message
        return isinstance(message, dict) and message.get("type") == "game_over" and "frames" in message

    # -- helpers ------------------------------------------------------------------------

    def _prepare(self, message: dict[str, Any] | bytes | str) -> bytes | str:
        """The recorded message with this session's participant id and token in place of the recorded ones."""
        if not isinstance(message, dict):
            return message
        out = dict(message)
        if out.get("type") == "hello":
            out["participant_id"] = self.participant_id
            params = out.get("params")
            if isinstance(params, dict) and "PROLIFIC_PID" in params:
                out["params"] = {**params, "PROLIFIC_PID": self.participant_id}
            out.pop("last_seq", None)
            if "resume_token" in out:
                if self.token:
                    out["resume_token"] = self.token
                else:
                    del out["resume_token"]
        if "session_token" in out and self.token:
            out["session_token"] = self.token
        if out.get("type") == "game_over" and "frames" in out and self.player is not None:
            out["frames"] = out["steps"] = self.player.reported or 0
        return protocol.encode(out)

    def _diverge(self, kind: str, detail: str) -> None:
        self.status, self.divergence, self.detail = "diverged", kind, detail


def _classify(message: dict[str, Any], expected: Expect | None) -> str:
    """gated, error, different_scene, different_state or unexpected."""
    kind = message.get("type")
    if kind == "error":
        return "gated" if message.get("code") == "gated" else "error"
    if expected is not None and kind == expected.type == "activate_scene":
        return "different_scene"
    if expected is not None and kind == expected.type == "state":
        return "different_state"
    return "unexpected"


def _brief(message: dict[str, Any]) -> str:
    kind = message.get("type")
    key = Expect.of(message).key
    reason = f" ({message['reason']})" if kind == "state" and message.get("reason") else ""
    return (f"{kind} {key}" if key else str(kind)) + reason
