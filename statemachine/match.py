"""The match lifecycle, declared once as data: a group of participants playing one game in lockstep.

The server's lobby drives one shared machine with every match; the diagrams draw it from this table
(`python -m statemachine diagram --machine match`); the participant's own lifecycle is in `lifecycle.py`.
"""

from __future__ import annotations

from typing import Any

from .lifecycle import SEPARATOR, TableMachine

MATCH_OUTCOMES = ("completed", "partner_left", "desync", "start_failed")
"""How a match can end, in the table's order; the canonical log and the export name them."""

MATCH_STATES: list[Any] = [
    "forming",
    {"name": "starting", "on_enter": "start_start_timer", "on_exit": "cancel_start_timer"},
    {"name": "playing", "on_enter": "start_ticking", "on_exit": "stop_ticking"},
    {"name": "paused", "on_enter": "start_reconnect_timer", "on_exit": "cancel_reconnect_timer"},
    {
        "name": "ended",
        "children": [{"name": outcome, "final": True} for outcome in MATCH_OUTCOMES],
        "on_enter": "end_match",
    },
]


def _ended(outcome: str) -> str:
    return SEPARATOR.join(("ended", outcome))


MATCH_TRANSITIONS: list[dict[str, Any]] = [
    # Every slot has a participant (or a bot): tell the pages, who load the game and say when they are ready.
    {"trigger": "start", "source": "forming", "dest": "starting", "after": "announce"},
    {"trigger": "match_ready", "source": "starting", "dest": None, "before": "note_ready", "after": "begin_if_ready"},
    {"trigger": "begin", "source": "starting", "dest": "playing", "conditions": "everyone_ready"},
    {"trigger": "start_timeout", "source": "starting", "dest": _ended("start_failed")},
    # Lockstep: the server closes one frame per tick; a player who drops pauses everyone.
    {"trigger": "tick", "source": "playing", "dest": None, "conditions": "frame_due", "after": "close_frame"},
    {"trigger": "drop", "source": ["starting", "paused"], "dest": None, "before": "note_drop"},
    {"trigger": "drop", "source": "playing", "dest": "paused", "before": "note_drop"},
    {"trigger": "rejoin", "source": "starting", "dest": None, "before": "note_rejoin"},
    {
        "trigger": "rejoin",
        "source": "paused",
        "dest": "playing",
        "prepare": "note_rejoin",
        "conditions": "everyone_present",
    },
    {"trigger": "rejoin", "source": "paused", "dest": None, "prepare": "note_rejoin"},
    {
        "trigger": "reconnect_timeout",
        "source": "paused",
        "dest": "playing",
        "conditions": "bot_takes_over",
        "before": "replace_absent",
    },
    {"trigger": "reconnect_timeout", "source": "paused", "dest": _ended("partner_left"), "before": "note_left"},
    # The end: every page reports the same last frame, or the state hashes or reports disagree.
    {"trigger": "report", "source": ["playing", "paused"], "dest": None, "before": "note_report", "after": "finish"},
    {"trigger": "finish", "source": ["playing", "paused"], "dest": _ended("completed"), "conditions": "all_agree"},
    {"trigger": "finish", "source": ["playing", "paused"], "dest": _ended("desync"), "conditions": "reports_differ"},
    {"trigger": "mismatch", "source": ["starting", "playing", "paused"], "dest": _ended("desync")},
]

MATCH_INITIAL = "forming"

MATCH_GUARD_LABELS: dict[str, str] = {
    "everyone_ready": "every page has the game loaded",
    "frame_due": "a frame is due",
    "everyone_present": "every player is connected",
    "bot_takes_over": "on_partner_loss is bot",
    "all_agree": "every player reported the same last frame",
    "reports_differ": "players reported different last frames",
}
MATCH_TRIGGER_LABELS: dict[str, str] = {
    "start": "a group is matched",
    "match_ready": "a page has loaded the game",
    "begin": "at once",
    "start_timeout": "timeout, not every page ready in time",
    "tick": "the match's clock, once per frame",
    "drop": "a player's connection is lost",
    "rejoin": "a player reconnects",
    "reconnect_timeout": "timeout, not back within reconnect_timeout_s",
    "report": "a page reports its game over",
    "finish": "at once",
    "mismatch": "two pages' state hashes differ",
}


class MatchMachine(TableMachine):
    """The match lifecycle's machine: every match in progress is one of its models."""

    def __init__(self, *, compiled: bool = True) -> None:
        super().__init__(
            MATCH_STATES, MATCH_TRANSITIONS, MATCH_INITIAL, compiled=compiled, after_state_change="record_transition"
        )
