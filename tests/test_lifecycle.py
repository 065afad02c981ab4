"""The lifecycle on plain sessions: no network, a hand-driven clock."""

from __future__ import annotations

import itertools
import random

import pytest

from client.participant import DESKTOP_CHROMIUM
from server.clock import SharedClock
from server.examples.gridworld.study import experiment as example
from server.session import Session, Timeouts
from server.snapshot import SnapshotWriter, restore
from statemachine import (
    FINAL_STATES,
    SEPARATOR,
    TRANSITIONS,
    Fired,
    SessionMachine,
    active_states,
    state_names,
    triggers,
)
from statemachine.lifecycle import top_state
from tests.support import HELLO, LOADING, READY, SCREENING, SITUATIONS, TimeClock

CHROME_UA = DESKTOP_CHROMIUM["user_agent"]
CLIENT_TRIGGERS = [
    "hello",
    "screening",
    "preload",
    "advance",
    "game_event",
    "game_over",
    "match_ready",
    "input",
    "state_hash",
]


class HandClock:
    """Timers that fire only when the test says so."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[float, object]] = {}
        self._next = 0

    def call_later(self, delay, callback):
        self._next += 1
        self.pending[self._next] = (delay, callback)
        return self._next

    def remove_timeout(self, handle):
        self.pending.pop(handle, None)

    def fire_all(self):
        for handle in list(self.pending):
            _, callback = self.pending.pop(handle)
            callback()


@pytest.fixture
def machine():
    return SessionMachine()


@pytest.fixture
def clock():
    return HandClock()


def new_session(machine, clock, experiment=example, ua=CHROME_UA, log=None):
    sent: list[dict] = []
    session = Session(
        machine, experiment, clock, sent.append, user_agent=ua, timeouts=Timeouts(1, 1), log=log or (lambda r: None)
    )
    session.rtt_ms = 5.0
    return session, sent


def moves(records):
    """The transitions a session recorded, as (event, source, dest)."""
    return [(r["event"], r["source"], r["dest"]) for r in records if r["kind"] == "transition"]


def msg(kind, **fields):
    return {"type": kind, **fields}


def drive(session, messages):
    """Fire each message's own type as its trigger, as the server does with what a socket delivers."""
    for message in messages:
        assert session.fire(message["type"], message) is Fired.ACCEPTED, (message["type"], session.state)


def accepted_triggers(state) -> set[str]:
    """What the table says a state accepts: transitions whose source is the state or one of its parents."""
    leaves = [state] if isinstance(state, str) else state
    sources = {
        SEPARATOR.join(leaf.split(SEPARATOR)[:n]) for leaf in leaves for n in range(1, leaf.count(SEPARATOR) + 2)
    }
    return {
        t["trigger"]
        for t in TRANSITIONS
        if sources & set(t["source"] if isinstance(t["source"], list) else [t["source"]])
    }


def test_states_keep_the_names_they_were_given(machine):
    assert "in_game" in machine.states and "in" not in machine.states
    assert set(state_names()) == set(machine.get_nested_state_names())


def test_every_trigger_in_the_table_is_an_event_of_the_machine(machine):
    assert set(triggers()) == set(machine.events)


def _refused_pairs() -> list[tuple[str, str]]:
    pairs = []
    for situation, steps in SITUATIONS.items():
        session, _ = new_session(SessionMachine(), HandClock())
        drive(session, steps)
        pairs += [(situation, t) for t in CLIENT_TRIGGERS if t not in accepted_triggers(session.state)]
    return pairs


@pytest.mark.parametrize("situation, trigger", _refused_pairs())
def test_every_message_the_state_does_not_accept_is_refused_without_a_change(machine, clock, situation, trigger):
    records: list[dict] = []
    session, _sent = new_session(machine, clock, log=records.append)
    drive(session, SITUATIONS[situation])
    before, recorded = session.state, len(records)
    message = {"hello": HELLO, "screening": SCREENING, "preload": READY}.get(trigger, msg(trigger))
    assert session.fire(trigger, message) is Fired.NOT_ACCEPTED
    assert session.state == before and not moves(records[recorded:])


@pytest.mark.parametrize("situation", SITUATIONS)
def test_the_cached_lookups_agree_with_the_library(machine, clock, situation):
    session, _ = new_session(machine, clock)
    drive(session, SITUATIONS[situation])
    # every trigger whose guards read only the session (the others need a message to be judged)
    for trigger in (
        "advance",
        "game_event",
        "game_over",
        "settle",
        "skip_preload",
        "screening_timeout",
        "preload_timeout",
    ):
        assert machine.allows(session, trigger) == bool(machine._can_trigger(session, trigger)), (situation, trigger)
    assert machine.allows(session, "no_such_trigger") is False


def test_a_game_event_runs_its_internal_transition_directly(machine, clock):
    session, sent = new_session(machine, clock)
    drive(session, SITUATIONS["in_game"])
    records: list[dict] = []
    session.log = records.append
    before, published = session.state, len(sent)
    assert session.fire("game_event", msg("game_event", step=3)) is Fired.ACCEPTED
    assert session.state == before and len(sent) == published
    assert [(r["kind"], r["data"]) for r in records] == [("game_event", {"step": 3})]


def test_a_participant_walks_the_whole_lifecycle(machine, clock):
    records: list[dict] = []
    session, sent = new_session(machine, clock, log=records.append)
    drive(session, SITUATIONS["completed"])
    assert [(source.split(SEPARATOR)[0], dest.split(SEPARATOR)[0]) for _, source, dest in moves(records)] == [
        ("connected", "preflight"),
        ("preflight", "preflight"),
        ("preflight", "preflight"),
        ("preflight", "ready"),
        ("ready", "in_game"),
        ("in_game", "ready"),
        ("ready", "completed"),
    ]
    times = [r["t"] for r in records if r["kind"] == "transition"]
    assert times == sorted(times) and session.changed_at is not None and session.changed_at >= times[-1]
    assert session.outcome == "completed" and session.state in FINAL_STATES
    assert not clock.pending
    assert [m["scene_type"] for m in sent if m["type"] == "activate_scene"] == ["start", "static", "game", "end"]


def test_advance_during_preflight_is_held_by_its_guards(machine, clock):
    session, _ = new_session(machine, clock)
    drive(session, SITUATIONS["preflight/passed+loading"])
    state = session.state
    assert session.fire("advance", msg("advance")) is Fired.HELD_BACK
    assert session.state == state


def test_each_state_message_is_sent_once(machine, clock):
    session, sent = new_session(machine, clock)
    drive(session, SITUATIONS["ready/start"])
    states = [m for m in sent if m["type"] == "state"]
    assert all(a != b for a, b in itertools.pairwise(states))
    assert states[-1]["state"] == "ready" and states[-1]["may_advance"] is True


def test_screening_silence_excludes_with_reason_timeout(machine, clock):
    session, sent = new_session(machine, clock)
    drive(session, [HELLO, READY])
    clock.fire_all()
    assert session.state == "excluded" and session.verdict == ("timeout",)
    assert sent[-1]["state"] == "excluded" and sent[-1]["reason"] == "timeout"
    assert not clock.pending


def test_preload_silence_is_an_error_that_still_lets_the_participant_play(machine, clock):
    session, _ = new_session(machine, clock)
    drive(session, [HELLO, SCREENING, LOADING])
    clock.fire_all()
    assert session.state == "ready" and session.preload_result == "error"
    drive(session, [msg("advance"), msg("advance")])
    assert session.state == "in_game"


def test_a_reported_preload_stage_does_not_restart_the_timer(machine, clock):
    session, _ = new_session(machine, clock)
    drive(session, [HELLO, LOADING])
    pending = dict(clock.pending)
    drive(session, [LOADING, LOADING])
    assert clock.pending == pending


def test_closing_cancels_timers_and_detaches(machine, clock):
    session, _ = new_session(machine, clock)
    drive(session, [HELLO])
    assert machine.attached == 1 and clock.pending
    session.release()
    assert machine.attached == 0 and not clock.pending and session.outcome is None  # only the table decides one


def test_sessions_attach_by_identity_even_when_they_compare_equal(machine, clock):
    class Equal(Session):
        __slots__ = ()

        def __eq__(self, other):
            return True

        __hash__ = object.__hash__

    a = Equal(machine, example, clock, lambda m: None)
    b = Equal(machine, example, clock, lambda m: None)
    assert machine.attached == 2
    a.fire("hello", msg("hello"))
    assert top_state(a.state)[0] == "preflight" and b.state == "connected"
    machine.remove_model(a)
    assert machine.attached == 1


def test_no_convenience_methods_are_bound_on_sessions(machine, clock):
    session, _ = new_session(machine, clock)
    assert not hasattr(session, "to") and not hasattr(session, "is_ready") and not hasattr(session, "may_advance")


@pytest.mark.parametrize(
    "situation", ["preflight/checking+idle", "preflight/passed+loading", "ready/instructions", "in_game"]
)
def test_a_dropped_session_resumes_exactly_where_it_was(machine, clock, situation):
    records: list[dict] = []
    session, sent = new_session(machine, clock, log=records.append)
    drive(session, SITUATIONS[situation])
    state, index, timers = session.state, session.index, sorted(session.timers.handles)
    assert session.connection_lost() is Fired.ACCEPTED
    assert session.state == "disconnected" and sorted(session.timers.handles) == ["grace_expired"]
    session.reconnect(sent.append, session.token, session.outbox.seq)
    assert session.state == state and session.index == index and sorted(session.timers.handles) == timers
    assert [(source, dest) for _, source, dest in moves(records)[-2:]] == [
        (top_state(state)[0], "disconnected"),
        ("disconnected", top_state(state)[0]),
    ]


def test_a_session_with_nothing_to_come_back_to_is_not_parked(machine, clock):
    session, _ = new_session(machine, clock)
    assert session.connection_lost() is Fired.NOT_ACCEPTED and session.state != "disconnected"


def test_a_finished_session_lingers_for_the_grace_period_then_retires_with_its_outcome(machine, clock):
    retired = []
    session, sent = new_session(machine, clock)
    session.on_retire = retired.append
    drive(session, SITUATIONS["completed"])
    assert session.connection_lost() is Fired.ACCEPTED
    assert session.state == "lingering" and sorted(session.timers.handles) == ["grace_expired"]
    session.reconnect(sent.append, session.token, 0)  # a page that lost the last message comes back for the code
    assert session.state == "completed" and sent[-1]["state"] == "completed" and not clock.pending
    session.connection_lost()
    clock.fire_all()
    assert session.state == "completed" and session.outcome == "completed" and retired == [session]


def test_the_grace_period_ends_in_abandoned(machine, clock):
    ended = []
    session, _ = new_session(machine, clock)
    session.on_retire = ended.append
    drive(session, SITUATIONS["ready/start"])
    session.connection_lost()
    clock.fire_all()
    assert session.state == "abandoned" and session.outcome == "abandoned" and ended == [session]
    assert session.fire("resume") is Fired.NOT_ACCEPTED


def test_resume_resends_exactly_what_was_not_acknowledged(machine, clock):
    session, sent = new_session(machine, clock)
    drive(session, SITUATIONS["ready/start"])
    session.outbox.ack(2)
    session.connection_lost()
    again: list[dict] = []
    session.reconnect(again.append, session.token, 2)
    assert again[:-1] == sent[2:]
    assert again[-1]["type"] == "state" and again[-1]["seq"] == sent[-1]["seq"] + 1


def test_a_reloaded_page_gets_everything_it_needs_to_redraw(machine, clock):
    session, sent = new_session(machine, clock)
    drive(session, SITUATIONS["ready/instructions"])
    session.outbox.ack(session.outbox.seq)
    session.connection_lost()
    again: list[dict] = []
    session.reconnect(again.append, session.token, 0)
    assert [m["type"] for m in again] == ["experiment_config", "activate_scene", "state"]
    assert again[1]["scene_id"] == "instructions" and again[2]["state"] == "ready"
    assert [m["seq"] for m in again] == list(range(sent[-1]["seq"] + 1, sent[-1]["seq"] + 4))


def test_a_restored_session_is_parked_where_its_snapshot_left_it(machine, clock):
    saved: list[dict] = []
    session, _ = new_session(machine, clock)
    session.save = SnapshotWriter(saved.append)
    drive(session, SITUATIONS["in_game"])
    other = SessionMachine()
    restored = restore(saved[-1], other, example, HandClock())
    assert restored.state == "disconnected" and restored.place == "in_game"
    assert [p.instance_id for p in restored.plan] == [p.instance_id for p in session.plan]
    restored.reconnect(lambda m: None, session.token, 0)
    assert restored.state == "in_game" and restored.index == session.index


def test_active_states_name_every_region_and_parent_a_session_is_in(machine, clock):
    session, _ = new_session(machine, clock)
    assert active_states(session.state) == {"connected"}
    session.fire("hello", msg("hello"))
    session.fire("preload", LOADING)
    assert active_states(session.state) == {
        "preflight",
        "preflight.screening",
        "preflight.screening.checking",
        "preflight.preloading",
        "preflight.preloading.loading",
    }
    assert active_states(session.state) <= set(state_names())


def test_a_game_scene_gets_episode_seeds_derived_from_the_recorded_seed(machine, clock):
    session, sent = new_session(machine, clock)
    drive(session, SITUATIONS["in_game"])
    [scene] = [m for m in sent if m["type"] == "activate_scene" and m["scene_type"] == "game"]
    assert scene["seeds"] == example.episode_seeds(session.seed, session.index, scene["episodes"])
    assert all(0 <= s < 2**31 for s in scene["seeds"])
    assert example.episode_seeds(session.seed, session.index, 3) != example.episode_seeds(session.seed + 1, 2, 3)


def test_batches_of_steps_are_recorded_and_game_over_is_checked_against_them(machine, clock):
    session, _ = new_session(machine, clock)
    drive(session, SITUATIONS["in_game"])
    records: list[dict] = []
    session.log = records.append
    batch = [{"episode": 0, "step": n, "action": 1, "reward": 0.0} for n in (1, 2, 3)]
    assert session.fire("steps", msg("steps", steps=batch)) is Fired.ACCEPTED
    assert session.fire("steps", msg("steps", steps=batch[:1])) is Fired.ACCEPTED
    assert session.fire("game_over", msg("game_over", steps=5, episodes=1)) is Fired.ACCEPTED
    [over] = [r for r in records if r["kind"] == "game_over"]
    assert [r["kind"] for r in records[:2]] == ["steps", "steps"] and records[0]["steps"] == batch
    assert over["check"] == {"reported_steps": 5, "received_steps": 4, "complete": False}


def test_steps_are_refused_outside_a_game(machine, clock):
    session, _ = new_session(machine, clock)
    drive(session, SITUATIONS["ready/instructions"])
    assert session.fire("steps", msg("steps", steps=[{"episode": 0, "step": 1}])) is Fired.NOT_ACCEPTED


def test_timers_on_one_shared_loop_timer_fire_as_each_on_its_own_would():
    """The server's sessions keep their timers in one heap on one loop timer: same callbacks, same order."""
    rng = random.Random(7)
    own, shared_loop = TimeClock(), TimeClock()
    shared = SharedClock(shared_loop)
    fired: dict[str, list[tuple[float, int]]] = {"own": [], "shared": []}
    handles: dict[str, list[object]] = {"own": [], "shared": []}

    def start(name: str, clock, delay: float, n: int) -> None:
        def callback() -> None:
            fired[name].append((clock.time(), n))
            if n % 5 == 0 and n < 1000:  # a timer that starts another, as a timeout moving the lifecycle on does
                start(name, clock, 0.5, n + 1000)

        handles[name].append(clock.call_later(delay, callback))

    for n in range(400):
        delay, cancel = rng.choice([0.0, 1.0, 2.5, 60.0, 300.0]), rng.random() < 0.6
        start("own", own, delay, n)
        start("shared", shared, delay, n)
        if cancel:
            own.remove_timeout(handles["own"][-1])
            shared.remove_timeout(handles["shared"][-1])
        if n % 50 == 0:
            own.advance(1.0)
            shared_loop.advance(1.0)
    own.advance(400.0)
    shared_loop.advance(400.0)
    assert fired["shared"] == fired["own"] and len(fired["own"]) > 100
    assert shared.pending == 0 and not shared_loop.pending  # nothing left, not even the loop's own timer
