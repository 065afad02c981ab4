"""One participant's session: the model the shared lifecycle machine drives.

It holds the participant's data and the callbacks the lifecycle table names; it
knows nothing about sockets: messages leave through `emit`, records through `sink`.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from statemachine import FINAL_STATES, RegionGuards, SessionMachine, top_state

from . import protocol
from .experiment import Experiment, Placed

Emit = Callable[[dict[str, Any]], None]
FINAL_LIST = sorted(FINAL_STATES)
"""Sent to the page, so it knows from the table (not a copy) when a session is over."""
Sink = Callable[[dict[str, Any]], None]


class Clock(Protocol):
    """What timers need; Tornado's IOLoop is one."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> object: ...

    def remove_timeout(self, timeout: object) -> None: ...


@dataclass(frozen=True)
class Timeouts:
    screening: float = 60.0
    preload: float = 300.0
    grace: float = 120.0  # how long a dropped participant may take to come back


def token_digest(token: str) -> str:
    """Sessions are found by a digest of their token, so the data directory never holds a usable token."""
    return hashlib.sha256(token.encode()).hexdigest()


class Outbox:
    """Numbers the messages that move a participant on and keeps them until acknowledged, for resending on resume."""

    __slots__ = ("seq", "unacked")
    LIMIT = 64

    def __init__(self) -> None:
        self.seq = 0
        self.unacked: deque[dict[str, Any]] = deque(maxlen=self.LIMIT)

    def number(self, message: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        numbered = {**message, "seq": self.seq}
        self.unacked.append(numbered)
        return numbered

    def ack(self, seq: int) -> None:
        while self.unacked and self.unacked[0]["seq"] <= seq:
            self.unacked.popleft()

    def since(self, seq: int) -> list[dict[str, Any]] | None:
        """What a client that has seen up to `seq` missed; None when some of it is no longer held."""
        if seq > self.seq:
            return None
        self.ack(seq)
        if seq < self.seq and (not self.unacked or self.unacked[0]["seq"] != seq + 1):
            return None
        return list(self.unacked)


def _drop(record: dict[str, Any]) -> None:
    pass


class Session(RegionGuards):
    """A participant's place in the lifecycle and everything they produced on the way."""

    __slots__ = (
        "_persisted",
        "_published",
        "_timers",
        "clock",
        "digest",
        "ended",
        "experiment",
        "facts",
        "history",
        "index",
        "machine",
        "outbox",
        "outcome",
        "params",
        "participant_id",
        "persist",
        "place",
        "plan",
        "rtt_ms",
        "runtime",
        "runtime_config",
        "seed",
        "send",
        "session_id",
        "sink",
        "state",
        "timeouts",
        "token",
        "user_agent",
        "verdict",
    )

    def __init__(
        self,
        machine: SessionMachine,
        experiment: Experiment,
        clock: Clock,
        send: Emit | None = None,
        *,
        runtime_config: dict[str, Any] | None = None,
        timeouts: Timeouts = Timeouts(),
        sink: Sink = _drop,
        persist: Sink = _drop,
        ended: Callable[[Session], None] = lambda s: None,
        user_agent: str = "",
        session_id: str = "",
    ) -> None:
        self.session_id = session_id or secrets.token_hex(8)
        self.machine = machine
        self.experiment = experiment
        self.runtime_config = runtime_config if runtime_config is not None else experiment.pyodide_config
        self.timeouts = timeouts
        self.clock = clock
        self.send = send
        self.sink = sink
        self.persist = persist
        self.ended = ended
        self.token = secrets.token_urlsafe(24)
        self.digest = token_digest(self.token)
        self.user_agent = user_agent
        self.rtt_ms: float | None = None
        self.participant_id: str | None = None
        self.params: dict[str, str] = {}
        self.seed: int | None = None
        self.plan: tuple[Placed, ...] = ()
        self.index = 0
        self.facts: dict[str, Any] = {}
        self.verdict: tuple[str, ...] = ()
        self.runtime = "pending"
        self.outcome: str | None = None
        self.place: Any = None
        self.outbox = Outbox()
        self.history: list[tuple[float, str, str, str]] = []
        self._timers: dict[str, object] = {}
        self._published: dict[str, Any] | None = None
        self._persisted: dict[str, Any] | None = None
        machine.add_model(self)

    # -- driving --------------------------------------------------------------------------

    def fire(self, trigger: str, *args: Any) -> bool | None:
        """True: moved; False: a guard held it back; None: not accepted in this state."""
        return self.machine.fire(self, trigger, *args)

    def emit(self, message: dict[str, Any]) -> None:
        """Number the message and hand it to the connection, if there is one; it stays held until acknowledged."""
        numbered = self.outbox.number(message)
        if self.send is not None:
            self.send(numbered)

    def attach(self, send: Emit, token: str, last_seq: int) -> None:
        """A connection came back with the token: send what it missed, or all it needs to redraw, then resume."""
        self.send = send
        self.token = token
        self.record("resumed", last_seq=last_seq)
        missed = self.outbox.since(last_seq)
        if missed is None:
            self.outbox.ack(self.outbox.seq)
            self.emit(self._config_message())
            self._emit_scene()
        else:
            for message in missed:
                send(message)
        self._published = None
        self.fire("resume")
        self.publish()

    def detach(self) -> bool:
        """The connection dropped: park the session for the grace period; False when it has nothing to come back to."""
        self.send = None
        return self.fire("drop") is True

    def close(self) -> None:
        """Detach from the machine for good; the outcome is final from here."""
        for name in list(self._timers):
            self._cancel(name)
        self.machine.remove_model(self)
        self.outcome = self.outcome or "abandoned"
        self.record("closed", outcome=self.outcome, state=self.snapshot()["state"])
        self._save()

    def saved(self) -> dict[str, Any]:
        """What survives a server restart: enough to put the participant back exactly where they were."""
        return {
            "session_id": self.session_id,
            "digest": self.digest,
            "participant_id": self.participant_id,
            "params": self.params,
            "seed": self.seed,
            "order": [p.instance_id for p in self.plan],
            "index": self.index,
            "facts": self.facts,
            "verdict": list(self.verdict),
            "runtime": self.runtime,
            "outcome": self.outcome,
            "state": self.state,
            "place": self.place,
            "seq": self.outbox.seq,
            "user_agent": self.user_agent,
            "rtt_ms": self.rtt_ms,
        }

    @classmethod
    def restore(
        cls, saved: dict[str, Any], machine: SessionMachine, experiment: Experiment, clock: Clock, **kwargs: Any
    ) -> Session:
        """A session from before a restart, parked as if its connection had just dropped."""
        self = cls(machine, experiment, clock, session_id=saved["session_id"], user_agent=saved["user_agent"], **kwargs)
        self.digest = saved["digest"]
        self.participant_id = saved["participant_id"]
        self.params = saved["params"]
        self.seed = saved["seed"]
        self.plan = experiment.plan(self.seed)
        if [p.instance_id for p in self.plan] != saved["order"]:
            machine.remove_model(self)
            raise ValueError(
                f"session {self.session_id}: the experiment no longer gives this participant the same scenes"
            )
        self.index = saved["index"]
        self.facts = saved["facts"]
        self.verdict = tuple(saved["verdict"])
        self.runtime = saved["runtime"]
        self.rtt_ms = saved["rtt_ms"]
        self.outbox.seq = saved["seq"]
        self.place = saved["place"] if saved["state"] == "disconnected" else saved["state"]
        machine.set_state("disconnected", self)
        self.start_grace_timer(None)
        self.record("restored", place=self.place)
        return self

    def record(self, kind: str, **fields: Any) -> None:
        self.sink({"kind": kind, "t": time.monotonic(), "wall": time.time(), **fields})

    def snapshot(self) -> dict[str, Any]:
        """The `state` message the participant's page would show now."""
        name, regions = top_state(self.state)
        detail: dict[str, Any] = {"scene_id": self.plan[self.index].instance_id if self.plan else None}
        if regions:
            detail["regions"] = regions
        if self.verdict:
            detail["reason"] = ",".join(self.verdict)
        return protocol.state(name, self.machine.allows(self, "advance"), **detail)

    @staticmethod
    def claimed_participant(hello: dict[str, Any]) -> str | None:
        """The participant id a `hello` names, if any; otherwise `begin` makes one up."""
        return hello.get("participant_id") or (hello.get("params") or {}).get("PROLIFIC_PID")

    # -- callbacks the lifecycle table names ---------------------------------------------------

    def begin(self, event: Any) -> None:
        hello = event.args[0]
        self.params = dict(hello.get("params") or {})
        self.participant_id = self.claimed_participant(hello) or secrets.token_hex(8)
        self.seed = secrets.randbits(32)
        self.plan = self.experiment.plan(self.seed)
        self.record(
            "begin",
            participant_id=self.participant_id,
            params=self.params,
            seed=self.seed,
            order=[p.instance_id for p in self.plan],
            user_agent=self.user_agent,
        )
        self.emit(self._config_message())
        self._activate()

    def skip_preload(self, event: Any) -> None:
        if self.machine.allows(self, "skip_preload"):  # the cached guard check spares a trigger that would not move
            self.fire("skip_preload")

    def settle(self, event: Any) -> None:
        if self.machine.allows(self, "settle"):
            self.fire("settle")

    def judge_screening(self, event: Any) -> None:
        self.facts = event.args[0]["facts"]
        self.verdict = self.experiment.screening.evaluate(self.facts, self.user_agent, self.rtt_ms)
        self.record("screening", facts=self.facts, rtt_ms=self.rtt_ms, verdict=list(self.verdict))

    def screening_ok(self, event: Any) -> bool:
        return not self.verdict

    def screening_timed_out(self, event: Any) -> None:
        self.verdict = ("timeout",)
        self.record("screening", facts={}, rtt_ms=self.rtt_ms, verdict=["timeout"])

    def reports_loading(self, event: Any) -> bool:
        return event.args[0]["status"] == "loading"

    def reports_ready(self, event: Any) -> bool:
        return event.args[0]["status"] == "ready"

    def reports_error(self, event: Any) -> bool:
        return event.args[0]["status"] == "error"

    def note_preload(self, event: Any) -> None:
        report = {k: v for k, v in event.args[0].items() if k != "type"}
        self.record("preload", **report)

    def preload_timed_out(self, event: Any) -> None:
        self.record("preload", status="error", error="timeout")

    def runtime_is_ready(self, event: Any) -> None:
        self.runtime = "ready"

    def runtime_is_error(self, event: Any) -> None:
        self.runtime = "error"

    def runtime_is_skipped(self, event: Any) -> None:
        self.runtime = "skipped"

    def runtime_not_needed(self, event: Any) -> bool:
        return not self.runtime_config["needs_pyodide"]

    def runtime_available(self, event: Any) -> bool:
        return self.runtime in ("ready", "error", "skipped")

    def exclude(self, event: Any) -> None:
        self.outcome = "excluded"

    def _next_type(self) -> str | None:
        nxt = self.index + 1
        return self.plan[nxt].scene_type if nxt < len(self.plan) else None

    def next_is_game(self, event: Any) -> bool:
        return self._next_type() == "game"

    def next_is_static(self, event: Any) -> bool:
        return self._next_type() == "static"

    def next_is_end(self, event: Any) -> bool:
        return self._next_type() == "end"

    def activate_next(self, event: Any) -> None:
        self.index += 1
        self._activate()

    def complete(self, event: Any) -> None:
        self.outcome = "completed"

    def abandon(self, event: Any) -> None:
        self.outcome = "abandoned"
        self.ended(self)

    def remember_place(self, event: Any) -> None:
        self.place = self.state

    def restore_place(self, event: Any) -> None:
        """Re-entering a state starts it afresh; put back the regions and timers it had when the socket dropped."""
        self.machine.set_state(self.place, self)
        if not self.screening_pending():
            self._cancel("screening")
        if not self.preload_pending():
            self._cancel("preload")
        self.place = None

    def start_grace_timer(self, event: Any) -> None:
        self._start("grace", self.timeouts.grace, "grace_expired")

    def cancel_grace_timer(self, event: Any) -> None:
        self._cancel("grace")

    def note_game_event(self, event: Any) -> None:
        self.record(
            "game_event",
            scene_id=self.plan[self.index].instance_id,
            data={k: v for k, v in event.args[0].items() if k != "type"},
        )

    def note_game_over(self, event: Any) -> None:
        self.record(
            "game_over",
            scene_id=self.plan[self.index].instance_id,
            data={k: v for k, v in event.args[0].items() if k != "type"},
        )

    def start_screening_timer(self, event: Any) -> None:
        self._start("screening", self.timeouts.screening, "screening_timeout")

    def cancel_screening_timer(self, event: Any) -> None:
        self._cancel("screening")

    def start_preload_timer(self, event: Any) -> None:
        self._start("preload", self.timeouts.preload, "preload_timeout")

    def cancel_preload_timer(self, event: Any) -> None:
        self._cancel("preload")

    def record_transition(self, event: Any) -> None:
        transition = event.transition
        if transition.dest is None:
            return
        entry = (time.monotonic(), event.event.name, transition.source, transition.dest)
        self.history.append(entry)
        self.record("transition", event=entry[1], source=entry[2], dest=entry[3])

    def publish_state(self, event: Any) -> None:
        if event.transition.dest is not None:
            self.publish(event)

    def publish(self, event: Any = None) -> None:
        """Save the session, and send the participant's state unless it is exactly what they were last sent."""
        self._save()
        if self.send is None:
            return
        snap = self.snapshot()
        if snap != self._published:
            self._published = snap
            self.emit(snap)

    # -- helpers ----------------------------------------------------------------------------

    def _activate(self) -> None:
        placed = self.plan[self.index]
        self.record("scene", scene_id=placed.instance_id, scene_type=placed.scene_type, index=self.index)
        self._emit_scene()

    def _emit_scene(self) -> None:
        placed = self.plan[self.index]
        self.emit(
            protocol.activate_scene(
                placed.instance_id, placed.scene_type, self.index, len(self.plan), placed.scene.payload()
            )
        )

    def _config_message(self) -> dict[str, Any]:
        return protocol.experiment_config(
            session_token=self.token,
            participant_id=self.participant_id,
            entry_screening=self.experiment.screening.describe(),
            pyodide_config=self.runtime_config,
            scene_count=len(self.plan),
            final_states=FINAL_LIST,
        )

    def _save(self) -> None:
        saved = self.saved()
        if saved != self._persisted:
            self._persisted = saved
            self.persist(saved)

    def _start(self, name: str, delay: float, trigger: str) -> None:
        self._cancel(name)
        self._timers[name] = self.clock.call_later(delay, lambda: self._expire(name, trigger))

    def _expire(self, name: str, trigger: str) -> None:
        self._timers.pop(name, None)
        self.fire(trigger)

    def _cancel(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            self.clock.remove_timeout(handle)
