"""The messages a participant's page is sent, built from their session: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from statemachine import SessionMachine, top_state

from . import protocol
from .experiment import Experiment, Placed


class Session(Protocol):
    """What the messages are built from: a session as the views may read it."""

    @property
    def token(self) -> str: ...

    @property
    def participant_id(self) -> str | None: ...

    @property
    def experiment(self) -> Experiment: ...

    @property
    def pyodide_config(self) -> dict[str, Any]: ...

    @property
    def plan(self) -> Sequence[Placed]: ...

    @property
    def index(self) -> int: ...

    @property
    def state(self) -> Any: ...

    @property
    def verdict(self) -> tuple[str, ...]: ...

    @property
    def machine(self) -> SessionMachine: ...

    @property
    def end_page(self) -> Any: ...

    def awaiting(self) -> tuple[str, ...]: ...

    def waiting_room(self) -> dict[str, Any] | None: ...

    def episode_seeds(self) -> tuple[int, ...] | None: ...


def config_message(session: Session) -> dict[str, Any]:
    return protocol.experiment_config(
        experiment=session.experiment.name,
        session_token=session.token,
        participant_id=session.participant_id or "",
        entry_screening=session.experiment.screening_shown,
        pyodide_config=session.pyodide_config,
        scene_count=len(session.plan),
    )


def scene_message(session: Session) -> dict[str, Any]:
    placed = session.plan[session.index]
    if session.end_page is not None:  # a multiplayer scene ended the session: its end page, not the study's
        end = session.end_page
        return protocol.activate_scene(end.scene_id, end.scene_type, session.index, len(session.plan), end.payload())
    payload = placed.scene.payload()
    seeds = session.episode_seeds()
    if seeds is not None:
        payload["seeds"] = seeds
    return protocol.activate_scene(placed.instance_id, placed.scene_type, session.index, len(session.plan), payload)


def state_message(session: Session) -> dict[str, Any]:
    """The `state` the participant's page shows now: where they are, whether they may move on, what is awaited."""
    name, regions = top_state(session.state)
    detail: dict[str, Any] = {"scene_id": session.plan[session.index].instance_id if session.plan else None}
    if regions:
        detail["regions"] = regions
    awaiting = session.awaiting()
    if awaiting:
        detail["awaiting"] = awaiting
    if session.verdict:
        detail["reason"] = ",".join(session.verdict)
    room = session.waiting_room()
    if room is not None:
        detail["waiting"] = room
    return protocol.state(name, session.machine.allows(session, "advance"), **detail)
