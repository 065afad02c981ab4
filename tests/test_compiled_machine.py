"""The flat machine compiled from the lifecycle table against the library's hierarchical resolution of it.

Every state configuration a session can reach from the initial state is visited (breadth first, with the
messages a page sends and the triggers the server's timers fire); from each, every trigger is fired on two
sessions brought there the same way, one on a compiled machine and one on the hierarchical machine. They must
agree on what firing did, on the callbacks and guards the table names (which, in what order, seeing which
transition, state and message), on the state they end in, on what the participant was sent and on what was
recorded.
"""

from __future__ import annotations

import itertools
import types
from typing import Any, ClassVar

import pytest

from client.participant import DESKTOP_CHROMIUM
from server.examples.gridworld.study import experiment as example
from server.experiment import Experiment
from server.matches import Lobby
from server.session import Session, Timeouts
from statemachine import STATES, TRANSITIONS, SessionMachine, top_state
from statemachine.lifecycle import _flatten
from statemachine.match import MATCH_STATES, MATCH_TRANSITIONS, MatchMachine
from tests.support import ADVANCE, FAILED, GAME_OVER, HELLO, LOADING, READY, SCREENING, SMALL_SCREEN, TimeClock, coop


def _names(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _callback_names(states: list[Any], transitions: list[dict[str, Any]]) -> set[str]:
    names = {"record_transition", "publish_state"}
    for t in transitions:
        for key in ("prepare", "conditions", "before", "after"):
            names.update(_names(t.get(key)))
    stack = list(states)
    while stack:
        state = stack.pop()
        if isinstance(state, dict):
            names.update(_names(state.get("on_enter")) + _names(state.get("on_exit")))
            stack.extend(state.get("parallel") or state.get("children") or [])
    return names


SESSION_CALLBACKS = _callback_names(STATES, TRANSITIONS)
MATCH_CALLBACKS = _callback_names(MATCH_STATES, MATCH_TRANSITIONS)


def _seen(event: Any) -> tuple[Any, ...]:
    if event is None:
        return (None,)
    transition = event.transition
    return (
        event.event.name if event.event else None,
        transition.source if transition else None,
        transition.dest if transition else None,
        event.args,
    )


class _Recording:
    """Logs every callback the table names as the machine calls it: name, what it saw, the model's state, result."""

    _callbacks: ClassVar[set[str]] = set()
    calls: list[tuple[Any, ...]]

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if name not in type(self)._callbacks or not callable(value):
            return value
        calls = object.__getattribute__(self, "calls")
        label = type(self).__name__

        def recorded(event: Any = None) -> Any:
            state = object.__getattribute__(self, "state")
            entry = [label, name, _seen(event), repr(state)]
            calls.append(entry)
            result = value(event) if event is not None else value()
            entry.append(result)
            return result

        return recorded


class RecordedSession(_Recording, Session):
    _callbacks = SESSION_CALLBACKS


EXPERIMENTS = {
    "example": example,
    "multiplayer, bots when unmatched": coop(on_no_match="bot"),
    "multiplayer, the end when unmatched": coop(on_no_match="end", on_partner_loss="end"),
    "multiplayer, skipped when unmatched": coop(on_no_match="skip"),
}

REACHED = {
    "example": ("in_game", "completed", "excluded", "abandoned"),
    "multiplayer, bots when unmatched": ("waiting", "in_game"),
    "multiplayer, the end when unmatched": ("waiting", "unmatched"),
    "multiplayer, skipped when unmatched": ("waiting",),
}
"""States each experiment must have been walked through, besides the ones every walk reaches."""

MOVES: list[tuple[str, dict[str, Any] | None]] = [
    ("hello", {**HELLO, "participant_id": "p-1"}),
    ("screening", SCREENING),
    ("screening", SMALL_SCREEN),
    ("preload", LOADING),
    ("preload", READY),
    ("preload", FAILED),
    ("advance", ADVANCE),
    ("game_event", {"type": "game_event", "n": 1, "score": 2}),
    ("steps", {"type": "steps", "n": 2, "steps": [{"t": 1}, {"t": 2}]}),
    ("game_over", {**GAME_OVER, "steps": 2}),
    ("match_ready", {"type": "match_ready"}),
    ("input", {"type": "input", "frame": 0, "action": 1}),
    ("state_hash", {"type": "state_hash", "frame": 0, "hash": "x"}),
    *(
        (trigger, None)
        for trigger in (
            "skip_preload",
            "settle",
            "screening_timeout",
            "preload_timeout",
            "drop",
            "resume",
            "grace_expired",
            "partner_deadline",
            "wait_timeout",
            "matched",
        )
    ),
]
"""What can happen to a session: each message a page sends (with variants where guards read it) and each trigger
the server fires itself (timers, the matchmaker, the connection)."""


@pytest.fixture
def fixed_randomness(monkeypatch):
    """Both sessions of a pair must make the same choices: the same ids, seeds and tokens."""
    counter = itertools.count()
    fake = types.SimpleNamespace(
        token_hex=lambda n=8: f"{next(counter):0{2 * n}x}",
        token_urlsafe=lambda n=24: "tok",
        randbits=lambda k: 12345,
    )
    monkeypatch.setattr("server.session.secrets", fake)
    monkeypatch.setattr("server.matches.secrets", fake)


MACHINES = {
    compiled: (SessionMachine(compiled=compiled), MatchMachine(compiled=compiled)) for compiled in (True, False)
}
"""One pair of machines for every session, as in the server: each table is compiled (or not) once."""


class Pair:
    """The same session twice: one on a compiled machine, one on the hierarchical machine."""

    def __init__(self, experiment: Experiment, path: list[tuple[str, dict[str, Any] | None]]) -> None:
        self.sides = [self._side(experiment, compiled) for compiled in (True, False)]
        for trigger, message in path:
            self.fire(trigger, message)

    @staticmethod
    def _side(experiment: Experiment, compiled: bool) -> dict[str, Any]:
        clock = TimeClock()
        records: list[dict[str, Any]] = []
        sent: list[dict[str, Any]] = []

        def keep(record: dict[str, Any]) -> None:
            # times differ between the two runs, and match ids are drawn from one counter for both
            records.append({k: v for k, v in record.items() if k not in ("t", "wall", "match_id")})

        lobby = Lobby(clock, lambda match_id: keep, MACHINES[compiled][1])
        machine = MACHINES[compiled][0]
        assert machine.compiled is compiled
        session = RecordedSession.__new__(RecordedSession)
        object.__setattr__(session, "calls", [])
        Session.__init__(
            session,
            machine,
            experiment,
            clock,
            sent.append,
            user_agent=DESKTOP_CHROMIUM["user_agent"],
            timeouts=Timeouts(),
            log=keep,
            lobby=lobby,
            session_id="s-1",
        )
        session.rtt_ms = 5.0
        return {"session": session, "records": records, "sent": sent}

    def fire(self, trigger: str, message: dict[str, Any] | None) -> list[Any]:
        outcomes = []
        for side in self.sides:
            args = () if message is None else (dict(message),)
            try:
                outcomes.append(side["session"].fire(trigger, *args))
            except Exception as exc:  # a callback that fails must fail the same way on both
                outcomes.append((type(exc).__name__, str(exc)))
        return outcomes

    def observed(self) -> list[tuple[Any, ...]]:
        return [
            (
                side["session"].state,
                side["session"].calls,
                side["records"],
                side["sent"],
                side["session"].place,
                side["session"].outcome,
            )
            for side in self.sides
        ]


def _key(session: Session) -> tuple[Any, ...]:
    state = session.state
    return (
        state if isinstance(state, str) else tuple(_flatten(state)),
        None if session.place is None else top_state(session.place)[0],
        session.index,
        session.match is not None,
    )


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_the_compiled_machine_and_the_hierarchical_one_agree_on_every_state_and_trigger(name, fixed_randomness):
    experiment = EXPERIMENTS[name]
    seen = {}
    frontier: list[list[tuple[str, dict[str, Any] | None]]] = [[]]
    fired = 0
    while frontier:
        path = frontier.pop(0)
        for trigger, message in MOVES:
            pair = Pair(experiment, path)
            compiled, hierarchical = pair.fire(trigger, message)
            fired += 1
            assert compiled == hierarchical, (path, trigger)
            a, b = pair.observed()
            assert a == b, (path, trigger)
            key = _key(pair.sides[0]["session"])
            if key not in seen and not isinstance(compiled, tuple):
                seen[key] = [*path, (trigger, message)]
                frontier.append(seen[key])
    configurations = {k[0] for k in seen}
    assert {"connected", "ready", "disconnected", "lingering", *REACHED[name]} <= configurations
    assert sum(isinstance(c, tuple) for c in configurations) >= 6  # the preflight's products a session stays in
    assert fired > 500


@pytest.mark.parametrize("start", [[], [("hello", {**HELLO, "participant_id": "p-1"})]])
def test_they_agree_from_every_configuration_the_compiler_plans_even_those_the_guards_leave_at_once(
    start, fixed_randomness
):
    """`restore_place` puts a session back into any configuration; settled preflight products are left by `settle`
    before a message could arrive, so the walk above never fires anything there."""
    configurations: list[Any] = []
    machine = SessionMachine()
    for trigger, key in machine._plans:
        for step in machine._plans[(trigger, key)] or ():
            if step.dest is not None and step.dest not in configurations:
                configurations.append(step.dest)
    assert len(configurations) >= 20
    for configuration in configurations:
        for trigger, message in MOVES:
            pair = Pair(example, start)
            for side in pair.sides:
                side["session"].machine.set_state(configuration, side["session"])
                side["session"].place = configuration if configuration in ("disconnected", "lingering") else None
            compiled, hierarchical = pair.fire(trigger, message)
            assert compiled == hierarchical, (configuration, trigger)
            a, b = pair.observed()
            assert a == b, (configuration, trigger)


def test_the_compiled_machine_plans_every_configuration_the_table_can_reach():
    machine = SessionMachine()
    assert machine.compiled
    reached = machine.compile()
    # connected, 3 x 5 preflight products, ready, waiting, in_game, the 5 final states, disconnected, lingering
    assert reached == 1 + 15 + 3 + 5 + 2
    match = MatchMachine()
    assert match.compiled and match.compile() == 4 + 4


def test_the_hierarchical_machine_is_still_there_for_tables_the_compiler_does_not_take():
    machine = SessionMachine(compiled=False)
    assert not machine.compiled
