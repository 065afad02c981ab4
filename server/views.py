"""The messages a participant's page is sent, built from their session: pure functions, no I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from statemachine import top_state

from . import protocol

if TYPE_CHECKING:
    from .session import Session


def config_message(session: Session) -> dict[str, Any]:
    return protocol.experiment_config(
        session_token=session.token,
        participant_id=session.participant_id or "",
        entry_screening=session.experiment.screening.describe(),
        pyodide_config=session.pyodide_config,
        scene_count=len(session.plan),
    )


def scene_message(session: Session) -> dict[str, Any]:
    placed = session.plan[session.index]
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
    return protocol.state(name, session.machine.allows(session, "advance"), **detail)
