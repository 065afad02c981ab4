"""A session as it survives a server restart: captured on every change, restored as if its connection had dropped."""

from __future__ import annotations

from typing import Any

from statemachine import SessionMachine

from .clock import Clock
from .experiment import Experiment
from .protocol import Writer
from .session import Session


def capture(session: Session) -> dict[str, Any]:
    """Enough to put the participant back exactly where they were."""
    return {
        "session_id": session.session_id,
        "digest": session.digest,
        "participant_id": session.participant_id,
        "params": session.params,
        "seed": session.seed,
        "order": [p.instance_id for p in session.plan],
        "index": session.index,
        "facts": session.facts,
        "verdict": list(session.verdict),
        "preload_result": session.preload_result,
        "game_steps": session.game_steps,
        "outcome": session.outcome,
        "state": session.state,
        "place": session.place,
        "seq": session.outbox.seq,
        "received_n": session.received_n,
        "user_agent": session.user_agent,
        "rtt_ms": session.rtt_ms,
        "groups": session.groups,
    }


def _values(session: Session) -> tuple[Any, ...]:
    """What `capture` is made of, as references: what a snapshot is compared by, cheaper to keep than a map."""
    return (
        session.session_id,
        session.digest,
        session.participant_id,
        session.params,
        session.seed,
        session.plan,  # the order, as the (shared) scenes placed
        session.index,
        session.facts,
        session.verdict,
        session.preload_result,
        session.game_steps,
        session.outcome,
        session.state,
        session.place,
        session.outbox.seq,
        session.received_n,
        session.user_agent,
        session.rtt_ms,
        session.groups,
    )


class SnapshotWriter:
    """Hands a session's snapshot to storage whenever it differs from the last one written."""

    __slots__ = ("last", "write")

    def __init__(self, write: Writer) -> None:
        self.write = write
        self.last: tuple[Any, ...] | None = None

    def __call__(self, session: Session) -> None:
        values = _values(session)
        if values != self.last:
            self.last = values
            self.write(capture(session))


def restore(
    saved: dict[str, Any], machine: SessionMachine, experiment: Experiment, clock: Clock, **kwargs: Any
) -> Session:
    """A session from before a restart, parked as if its connection had just dropped."""
    session = Session(
        machine, experiment, clock, session_id=saved["session_id"], user_agent=saved["user_agent"], **kwargs
    )
    session.digest = saved["digest"]
    session.participant_id = saved["participant_id"]
    session.params = saved["params"]
    session.seed = saved["seed"]
    session.plan = experiment.plan(session.seed)
    if [p.instance_id for p in session.plan] != saved["order"]:
        machine.remove_model(session)
        raise ValueError(
            f"session {session.session_id}: the experiment no longer gives this participant the same scenes"
        )
    session.index = saved["index"]
    session.facts = saved["facts"]
    session.verdict = tuple(saved["verdict"])
    session.preload_result = saved["preload_result"]
    session.game_steps = saved.get("game_steps", 0)
    session.rtt_ms = saved["rtt_ms"]
    session.outbox.seq = saved["seq"]
    session.received_n = saved.get("received_n", 0)
    session.groups = dict(saved.get("groups") or {})
    session.place = saved["place"] if saved["place"] is not None else saved["state"]
    machine.park(session)
    session.record("restored", place=session.place)
    return session
