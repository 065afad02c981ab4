"""The participant lifecycle: one declarative table, one shared machine."""

from .lifecycle import (
    FINAL_STATES,
    GUARD_LABELS,
    INITIAL,
    SEPARATOR,
    STATES,
    TRANSITIONS,
    TRIGGER_LABELS,
    RegionGuards,
    SessionMachine,
    active_states,
    state_names,
    top_state,
    triggers,
)

__all__ = [
    "FINAL_STATES",
    "GUARD_LABELS",
    "INITIAL",
    "SEPARATOR",
    "STATES",
    "TRANSITIONS",
    "TRIGGER_LABELS",
    "RegionGuards",
    "SessionMachine",
    "active_states",
    "state_names",
    "top_state",
    "triggers",
]
