"""The participant lifecycle, declared once as data.

The server drives sessions with it, the diagrams are drawn from it and the tests
walk it; nothing else in the project knows which state allows what.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any, NamedTuple

from transitions import MachineError
from transitions.core import EventData
from transitions.extensions.nesting import (
    HierarchicalMachine,
    NestedEventData,
    NestedState,
    _build_state_list,
    resolve_order,
)

SEPARATOR = "."
"""Joins nested state names; `_` (the library default) would split `in_game` in two."""


def _in(*path: str) -> str:
    return SEPARATOR.join(path)


IN_GAME = "in_game"
"""Where the participant plays: the page starts the scene's game when the server puts them here."""
WAITING = "waiting"
"""The waiting room before a multiplayer game: in the server's queue, with a deadline on the server's clock."""
SCREENING = _in("preflight", "screening")
PRELOADING = _in("preflight", "preloading")
PRELOAD_SETTLED = ("ready", "error", "skipped")
"""The preload region's answers: Python is there, failed (the game loads it itself), or is not needed."""

STATES: list[Any] = [
    "connected",
    {
        "name": "preflight",
        "parallel": [
            {
                "name": "screening",
                "initial": "checking",
                "on_enter": "start_screening_timer",
                "children": [
                    {"name": "checking", "on_exit": "cancel_screening_timer"},
                    {"name": "passed", "final": True},
                    {"name": "failed", "final": True},
                ],
            },
            {
                "name": "preloading",
                "initial": "idle",
                "on_enter": "start_preload_timer",
                "on_exit": "cancel_preload_timer",
                "children": [
                    "idle",
                    "loading",
                    *(
                        {"name": leaf, "final": True, "on_enter": ["cancel_preload_timer", "note_preload_result"]}
                        for leaf in PRELOAD_SETTLED
                    ),
                ],
            },
        ],
    },
    "ready",
    {"name": WAITING, "on_enter": "join_queue", "on_exit": "leave_queue"},
    IN_GAME,
    {"name": "completed", "final": True, "on_enter": "decide_outcome"},
    {"name": "excluded", "final": True, "on_enter": "decide_outcome"},
    {"name": "disconnected", "on_enter": "start_grace_timer", "on_exit": "cancel_grace_timer"},
    {"name": "abandoned", "final": True, "on_enter": ["decide_outcome", "retire"]},
    {"name": "lingering", "on_enter": "start_grace_timer", "on_exit": "cancel_grace_timer"},
    {"name": "unmatched", "final": True, "on_enter": ["decide_outcome", "show_end_page"]},
    {"name": "partner_lost", "final": True, "on_enter": ["decide_outcome", "show_end_page"]},
]

FINAL_STATES = frozenset(s["name"] for s in STATES if isinstance(s, dict) and s.get("final"))
"""Top-level states marked final: the participant's outcome is decided there."""
OUTCOMES = tuple(s["name"] for s in STATES if isinstance(s, dict) and s.get("final"))
"""Every outcome a session can end with, in the table's order; admin, export and the page read them from here."""

RESUMABLE = ("preflight", "ready", WAITING, "in_game")
"""Where a participant can be when their connection drops; before `hello` there is nothing to resume."""
FINISHED = tuple(o for o in OUTCOMES if o != "abandoned")
"""Outcomes reached with the participant present: the session lingers after the drop, so a page that lost the
last message can still come back for the completion code."""

_PRELOAD_PENDING = [_in(PRELOADING, "idle"), _in(PRELOADING, "loading")]

TRANSITIONS: list[dict[str, Any]] = [
    # The first message opens the preflight: screening and preloading run side by side.
    {"trigger": "hello", "source": "connected", "dest": "preflight", "before": "begin", "after": "skip_preload"},
    {
        "trigger": "skip_preload",
        "source": _in(PRELOADING, "idle"),
        "dest": _in(PRELOADING, "skipped"),
        "conditions": "runtime_not_needed",
        "after": "settle",
    },
    # Screening: the server judges the page's facts; silence ends in failure.
    {
        "trigger": "screening",
        "source": _in(SCREENING, "checking"),
        "dest": _in(SCREENING, "passed"),
        "prepare": "judge_screening",
        "conditions": "screening_ok",
        "after": "settle",
    },
    {"trigger": "screening", "source": _in(SCREENING, "checking"), "dest": _in(SCREENING, "failed"), "after": "settle"},
    {
        "trigger": "screening_timeout",
        "source": _in(SCREENING, "checking"),
        "dest": _in(SCREENING, "failed"),
        "before": "screening_timed_out",
        "after": "settle",
    },
    # Preloading: the page reports its progress; silence ends in error, which never traps anyone.
    {
        "trigger": "preload",
        "source": _in(PRELOADING, "idle"),
        "dest": _in(PRELOADING, "loading"),
        "conditions": "reports_loading",
        "before": "note_preload",
    },
    {
        "trigger": "preload",
        "source": _in(PRELOADING, "loading"),
        "dest": None,
        "conditions": "reports_loading",
        "before": "note_preload",
    },
    {
        "trigger": "preload",
        "source": _PRELOAD_PENDING,
        "dest": _in(PRELOADING, "ready"),
        "conditions": "reports_ready",
        "before": "note_preload",
        "after": "settle",
    },
    {
        "trigger": "preload",
        "source": _PRELOAD_PENDING,
        "dest": _in(PRELOADING, "error"),
        "conditions": "reports_error",
        "before": "note_preload",
        "after": "settle",
    },
    {
        "trigger": "preload_timeout",
        "source": _PRELOAD_PENDING,
        "dest": _in(PRELOADING, "error"),
        "before": "preload_timed_out",
        "after": "settle",
    },
    # The preflight settles by itself once both regions have an answer.
    {"trigger": "settle", "source": "preflight", "dest": "excluded", "conditions": "screening_failed"},
    {
        "trigger": "settle",
        "source": "preflight",
        "dest": "ready",
        "conditions": ["screening_passed", "preload_settled"],
    },
    # The gate: an advance before the preflight has settled is refused, never queued. Past it Python is ready or
    # has failed, and a failed preload never keeps anyone out of a game (the game loads Python itself).
    {
        "trigger": "advance",
        "source": "preflight",
        "dest": "ready",
        "conditions": ["screening_passed", "preload_settled"],
    },
    {
        "trigger": "advance",
        "source": "ready",
        "dest": "in_game",
        "conditions": "next_is_game",
        "before": "activate_next",
    },
    {
        "trigger": "advance",
        "source": "ready",
        "dest": WAITING,
        "conditions": "next_is_multiplayer",
        "before": "activate_next",
    },
    {
        "trigger": "advance",
        "source": "ready",
        "dest": "completed",
        "conditions": "next_is_end",
        "before": "activate_next",
    },
    {
        "trigger": "advance",
        "source": "ready",
        "dest": None,
        "conditions": "next_is_static",
        "before": "activate_next",
        "after": "publish",
    },
    # The game: events are research data; game_over hands control back to the participant.
    {"trigger": "game_event", "source": IN_GAME, "dest": None, "before": "note_game_event"},
    {"trigger": "steps", "source": IN_GAME, "dest": None, "before": "note_steps"},
    {"trigger": "preload", "source": ["ready", "in_game"], "dest": None, "before": "note_preload"},
    {
        "trigger": "game_over",
        "source": "in_game",
        "dest": "partner_lost",
        "conditions": "match_ends_session",
        "before": "note_game_over",
    },
    {"trigger": "game_over", "source": "in_game", "dest": "ready", "before": "note_game_over"},
    # Multiplayer: the server's matchmaker puts a group into a game; the wait and the partners' absences are
    # timed on the server, and what happens then is the scene's `Multiplayer` choice.
    {"trigger": "matched", "source": WAITING, "dest": "in_game", "before": "join_match"},
    {
        "trigger": "wait_timeout",
        "source": WAITING,
        "dest": "in_game",
        "conditions": "no_match_plays_bots",
        "before": "play_with_bots",
    },
    {
        "trigger": "wait_timeout",
        "source": WAITING,
        "dest": "unmatched",
        "conditions": "no_match_ends_session",
        "before": "note_unmatched",
    },
    {"trigger": "wait_timeout", "source": WAITING, "dest": "ready", "before": "note_unmatched"},
    {"trigger": "match_ready", "source": "in_game", "dest": None, "before": "forward_to_match"},
    {"trigger": "input", "source": "in_game", "dest": None, "before": "forward_to_match"},
    {"trigger": "state_hash", "source": "in_game", "dest": None, "before": "forward_to_match"},
    # The connection: a dropped socket parks the session; its token brings it back exactly where it was.
    {"trigger": "drop", "source": list(RESUMABLE), "dest": "disconnected", "before": ["remember_place", "leave_match"]},
    # A multiplayer game does not survive a server restart: its player comes back past it, to move on.
    {
        "trigger": "resume",
        "source": "disconnected",
        "dest": "ready",
        "conditions": ["left_in_game", "match_gone"],
        "before": "note_match_gone",
    },
    *(
        {
            "trigger": "resume",
            "source": "disconnected",
            "dest": place,
            "conditions": f"left_{place}",
            "after": "restore_place",
        }
        for place in RESUMABLE
    ),
    {"trigger": "grace_expired", "source": "disconnected", "dest": "abandoned"},
    {"trigger": "partner_deadline", "source": "disconnected", "dest": "abandoned", "conditions": "left_in_game"},
    # A finished session lingers as long, then closes with the outcome it had.
    {"trigger": "drop", "source": list(FINISHED), "dest": "lingering", "before": "remember_place"},
    *({"trigger": "resume", "source": "lingering", "dest": done, "conditions": f"left_{done}"} for done in FINISHED),
    *(
        {
            "trigger": "grace_expired",
            "source": "lingering",
            "dest": done,
            "conditions": f"left_{done}",
            "after": "retire",
        }
        for done in FINISHED
    ),
]

INITIAL = "connected"


class Fired(enum.Enum):
    """What firing a trigger did: the handler answers each differently."""

    ACCEPTED = "accepted"  # a transition ran: the session moved, or took the data in place
    HELD_BACK = "held_back"  # the state has the trigger, but its guards say not yet
    NOT_ACCEPTED = "not_accepted"  # the state has no such trigger


GUARD_LABELS: dict[str, str] = {
    "runtime_not_needed": "experiment needs no Python",
    "screening_ok": "facts meet the entry rules",
    "reports_loading": "page reports loading",
    "reports_ready": "page reports ready",
    "reports_error": "page reports an error",
    "screening_failed": "screening failed",
    "screening_passed": "screening passed",
    "preload_settled": "Python ready, failed or not needed",
    "next_is_game": "next scene is a game",
    "next_is_end": "next scene is the end",
    "next_is_static": "next scene is a page",
    "next_is_multiplayer": "next scene is a multiplayer game",
    "match_gone": "their multiplayer game ended while they were away",
    "match_ends_session": "the match ended, on_partner_loss is end",
    "no_match_plays_bots": "on_no_match is bot",
    "no_match_ends_session": "on_no_match is end",
    **{f"left_{place}": f"was in {place} when the connection dropped" for place in (*RESUMABLE, *FINISHED)},
}
"""What each guard means, in the words the diagrams use."""

TRIGGER_LABELS: dict[str, str] = {
    "hello": "page opens",
    "skip_preload": "at once",
    "screening": "page reports its facts",
    "screening_timeout": "timeout, no facts within --screening-timeout",
    "preload_timeout": "timeout, no ready or error within --preload-timeout",
    "settle": "as soon as both regions have answered",
    "advance": "participant moves on",
    "game_event": "game data",
    "steps": "a batch of game steps",
    "game_over": "game ends",
    "drop": "connection lost",
    "resume": "participant reconnects with their token",
    "grace_expired": "timeout, not back within --grace",
    "matched": "the matchmaker forms a group",
    "wait_timeout": "timeout, no group within wait_timeout_s",
    "match_ready": "page has loaded the game",
    "input": "page sends an action for a frame",
    "state_hash": "page reports its state hash",
    "partner_deadline": "timeout, not back within reconnect_timeout_s",
}
"""What sets each trigger off, in the diagrams' words; the timer-fired ones are named `*_timeout` or `*_expired`."""


class _State(NestedState):
    separator = SEPARATOR


class Step(NamedTuple):
    """One transition of a compiled plan, with everything the library would otherwise resolve on every trigger."""

    transition: Any
    source: Any  # the state whose transition this is (the library's `event.state` while it runs)
    before: tuple[Any, ...]  # the machine's before_state_change, then the transition's before
    exits: tuple[Any, ...]  # on_exit callbacks of the states left, innermost first
    dest: Any  # the model's configuration afterwards; None for an internal transition
    enters: tuple[Any, ...]  # on_enter callbacks of the states entered, outermost first
    after: tuple[Any, ...]  # the transition's after, then the machine's after_state_change


class _Probe:
    """A stand-in model the compiler moves through the table."""

    def __init__(self, state: Any = None) -> None:
        self.state = state


_UNSEEN: Any = object()


def _copy(state: Any) -> Any:
    """A configuration of the model's own: a name, or a fresh (nested) list of leaves."""
    return state if isinstance(state, str) else [_copy(item) for item in state]


class TableMachine(HierarchicalMachine):
    """One machine for every model of a table: models attach and detach in O(1), by identity.

    The library's own `add_model` scans a list (O(N), compared with `==`) and binds
    a dozen convenience partials on every model; sessions and matches need neither.
    """

    state_cls = _State

    def __init__(
        self,
        states: list[Any],
        transitions: list[dict[str, Any]],
        initial: str,
        *,
        compiled: bool = True,
        **callbacks: Any,
    ) -> None:
        super().__init__(
            model=None,
            states=states,
            transitions=transitions,
            initial=initial,
            auto_transitions=False,
            send_event=True,
            **callbacks,
        )
        self.initial_name = initial
        probe = _Probe()
        self.set_state(initial, probe)
        self._initial_state = probe.state  # a name: every new model is given it as it is, without resolving it again
        self._attached: dict[int, Any] = {}
        self._preparing: set[int] = set()  # found candidates (by id: each is kept) among which one has `prepare`
        self._candidates: dict[tuple[str, Any], tuple[Any, ...]] = {}
        self.compiled = compiled and self._compilable()
        self._plans: dict[tuple[str, Any], tuple[Step, ...] | None] = {}
        if self.compiled:
            self.compile()

    def add_model(self, model: Any, initial: Any = None) -> None:
        """Attach `model` in the initial state; attaching the same object twice is a no-op."""
        for mod in model if isinstance(model, list) else [model]:
            if id(mod) not in self._attached:
                if isinstance(self._initial_state, str):
                    setattr(mod, self.model_attribute, self._initial_state)
                else:
                    self.set_state(self.initial_name, mod)
                self._attached[id(mod)] = mod

    def remove_model(self, model: Any) -> None:
        for mod in model if isinstance(model, list) else [model]:
            self._attached.pop(id(mod), None)

    @property
    def attached(self) -> int:
        return len(self._attached)

    def fire(self, model: Any, trigger: str, *args: Any) -> Fired:
        """Fire `trigger` on `model` and say what came of it."""
        if self.compiled:
            state = model.state
            plan = self._plans.get((trigger, _key(state)), _UNSEEN)
            if plan is _UNSEEN:
                plan = self._plan(trigger, state)
            if plan is not None:
                return self._run(plan, model, trigger, args)
        return self.fire_nested(model, trigger, *args)

    def fire_nested(self, model: Any, trigger: str, *args: Any) -> Fired:
        """Fire `trigger` through the library's hierarchical resolution (what compiled plans are checked against)."""
        candidates = self.candidates(trigger, model.state)
        if not candidates:
            return Fired.NOT_ACCEPTED
        if len(candidates) == 1 and candidates[0].dest is None:
            # The only way out is an internal transition (a game event): run it as the library would once it had
            # found it, without resolving the state tree again for every message.
            transition = candidates[0]
            event = EventData(None, self.events[trigger], self, model, args, {})
            event.transition = transition
            return Fired.ACCEPTED if transition.execute(event) else Fired.HELD_BACK
        try:
            moved = self.trigger_event(model, trigger, *args)
        except MachineError:
            return Fired.NOT_ACCEPTED
        return Fired.ACCEPTED if moved else Fired.HELD_BACK

    # -- the flat machine: the table compiled into one plan per state configuration and trigger --------------

    def _compilable(self) -> bool:
        """Whether the plans can run everything the library would: no hooks a plan does not replay."""
        if self.prepare_event or self.finalize_event or self.on_exception or self.on_final or self.has_queue:
            return False
        return not any(state.on_final for state in self._all_states())

    def _all_states(self) -> Iterator[Any]:
        stack = list(self.states.values())
        while stack:
            state = stack.pop()
            yield state
            stack.extend(state.states.values())

    def compile(self) -> int:
        """Plan every trigger from every state configuration reachable from the initial one; returns how many.

        A configuration is a product of the regions' states (a name, or the leaves of a parallel state); from
        each, a trigger's plan lists the transitions the library would try, in its order, each with the exit
        and enter callbacks it would run and the configuration it would leave the model in. Guards are not
        evaluated here: every transition that could pass is followed.
        """
        probe = _Probe()
        self.set_state(self.initial_name, probe)
        seen: dict[Any, Any] = {}
        queue = [probe.state]
        while queue:
            state = queue.pop()
            key = _key(state)
            if key in seen:
                continue
            seen[key] = state
            for trigger in self.events:
                for step in self._plan(trigger, state) or ():
                    if step.dest is not None:
                        queue.append(step.dest)
        return len(seen)

    def _plan(self, trigger: str, state: Any) -> tuple[Step, ...] | None:
        """The plan for `trigger` from `state` (None: leave it to the library), made once per configuration."""
        key = (trigger, _key(state))
        if key in self._plans:
            return self._plans[key]
        plan: tuple[Step, ...] | None = ()
        event = self.events.get(trigger)
        if event is not None:
            tree = self.build_state_tree(_copy(state), SEPARATOR)
            sources = [name for path in resolve_order(tree) if (name := SEPARATOR.join(path)) in event.transitions]
            # The library goes on to the other regions after one has moved; a plan stops at the first transition
            # that runs, so it is only the same when every source lies on one branch (a leaf and its parents).
            if all(
                a.startswith(b + SEPARATOR) or b.startswith(a + SEPARATOR) for a in sources for b in sources if a != b
            ):
                plan = tuple(self._step(event, name, t, state) for name in sources for t in event.transitions[name])
            else:
                plan = None
        self._plans[key] = plan
        return plan

    def _step(self, event: Any, source: str, transition: Any, state: Any) -> Step:
        """One transition as the library would run it from `state`: its exits, the new configuration, its enters."""
        before = (*self.before_state_change, *transition.before)
        after = (*transition.after, *self.after_state_change)
        source_state = self.get_state(source)
        if transition.dest is None:
            return Step(transition, source_state, before, (), None, (), after)
        probe = _Probe(_copy(state))
        data = NestedEventData(source_state, event, self, probe, (), {})
        data.source_name, data.source_path, data.transition = source, source.split(SEPARATOR), transition
        with self():
            tree, exits, enters = transition._resolve_transition(data)
            self.set_state(_build_state_list(tree, SEPARATOR), probe)
        return Step(
            transition,
            source_state,
            before,
            tuple(cb for part in exits for cb in part.func.__self__.on_exit),
            probe.state,
            tuple(cb for part in enters for cb in part.func.__self__.on_enter),
            after,
        )

    def _run(self, plan: tuple[Step, ...], model: Any, trigger: str, args: tuple[Any, ...]) -> Fired:
        """Run a plan: prepare, conditions, before, exits, the new state, enters, after (the library's order)."""
        if not plan:
            return Fired.NOT_ACCEPTED
        event = EventData(None, self.events[trigger], self, model, args, {})
        callback = self.callback
        # A callback named by a string that is a method of the model (all of the table's) is called directly, as
        # the library's `resolve_callable` would find it; anything else goes through the library.
        for step in plan:
            transition = event.transition = step.transition
            event.state = step.source
            for func in transition.prepare:
                callback(func, event)
            for condition in transition.conditions:
                if not _holds(condition, model, event):
                    break
            else:
                for func in step.before:
                    if func.__class__ is str and callable(method := getattr(model, func, None)):
                        method(event)
                    else:
                        callback(func, event)
                if step.dest is not None:
                    for func in step.exits:
                        if func.__class__ is str and callable(method := getattr(model, func, None)):
                            method(event)
                        else:
                            callback(func, event)
                    model.state = _copy(step.dest)
                    for func in step.enters:
                        if func.__class__ is str and callable(method := getattr(model, func, None)):
                            method(event)
                        else:
                            callback(func, event)
                for func in step.after:
                    if func.__class__ is str and callable(method := getattr(model, func, None)):
                        method(event)
                    else:
                        callback(func, event)
                return Fired.ACCEPTED
        return Fired.HELD_BACK

    def allows(self, model: Any, trigger: str) -> bool:
        """Whether `trigger` would pass its guards now (no side effects run)."""
        candidates = self.candidates(trigger, model.state)
        if not candidates:
            return False
        if self.prepare_event or id(candidates) in self._preparing:
            return bool(self._can_trigger(model, trigger))
        event = EventData(None, self.events[trigger], self, model, (), {})
        for transition in candidates:
            event.transition = transition
            for condition in transition.conditions:
                if not _holds(condition, model, event):
                    break
            else:
                return True
        return False

    def candidates(self, trigger: str, state: Any) -> tuple[Any, ...]:
        """The transitions for `trigger` from the active states and their parents, found once per configuration."""
        key = (trigger, _key(state))
        found = self._candidates.get(key)
        if found is None:
            event = self.events.get(trigger)
            ordered: list[Any] = []
            for leaf in (key[1],) if isinstance(key[1], str) else key[1]:
                parts = leaf.split(SEPARATOR)
                for depth in range(len(parts), 0, -1):
                    for transition in event.transitions.get(SEPARATOR.join(parts[:depth]), []) if event else []:
                        if transition not in ordered:
                            ordered.append(transition)
            found = self._candidates[key] = tuple(ordered)
            if any(t.prepare for t in found):  # it runs before the guards: `allows` leaves those to the library
                self._preparing.add(id(found))
        return found


class SessionMachine(TableMachine):
    """The participant lifecycle's machine: every session of the study is one of its models."""

    def __init__(self, *, compiled: bool = True) -> None:
        super().__init__(
            STATES,
            TRANSITIONS,
            INITIAL,
            compiled=compiled,
            before_state_change="record_transition",
            after_state_change="publish_state",
        )

    def park(self, model: Any) -> None:
        """Put a session restored after a restart where a dropped one waits, its grace timer running."""
        self.set_state("disconnected", model)
        model.start_grace_timer(None)


def state_names() -> list[str]:
    """Every state's full name, parents included, in declaration order."""
    out: list[str] = []

    def walk(items: list[Any], prefix: tuple[str, ...]) -> None:
        for item in items:
            name = item if isinstance(item, str) else item["name"]
            out.append(_in(*prefix, name))
            if isinstance(item, dict):
                walk(item.get("parallel") or item.get("children") or [], (*prefix, name))

    walk(STATES, ())
    return out


def triggers() -> list[str]:
    """Every trigger in the table, in declaration order."""
    return list(dict.fromkeys(t["trigger"] for t in TRANSITIONS))


_AWAITING = {
    (True, True): ("screening", "preload"),
    (True, False): ("screening",),
    (False, True): ("preload",),
    (False, False): (),
}


class RegionGuards:
    """Guards that read the preflight's regions and a parked session's place; they live beside the table."""

    state: Any
    place: Any

    def _left(self, name: str) -> bool:
        return top_state(self.place)[0] == name

    def left_preflight(self, event: EventData | None = None) -> bool:
        return self._left("preflight")

    def left_ready(self, event: EventData | None = None) -> bool:
        return self._left("ready")

    def left_in_game(self, event: EventData | None = None) -> bool:
        return self._left("in_game")

    def left_waiting(self, event: EventData | None = None) -> bool:
        return self._left(WAITING)

    def left_unmatched(self, event: EventData | None = None) -> bool:
        return self._left("unmatched")

    def left_partner_lost(self, event: EventData | None = None) -> bool:
        return self._left("partner_lost")

    def left_completed(self, event: EventData | None = None) -> bool:
        return self._left("completed")

    def left_excluded(self, event: EventData | None = None) -> bool:
        return self._left("excluded")

    def screening_pending(self, event: EventData | None = None) -> bool:
        return _in(SCREENING, "checking") in self.state

    def preload_pending(self, event: EventData | None = None) -> bool:
        return any(s in self.state for s in _PRELOAD_PENDING)

    def screening_passed(self, event: EventData | None = None) -> bool:
        return _in(SCREENING, "passed") in self.state

    def screening_failed(self, event: EventData | None = None) -> bool:
        return _in(SCREENING, "failed") in self.state

    def preload_settled(self, event: EventData | None = None) -> bool:
        return any(_in(PRELOADING, s) in self.state for s in PRELOAD_SETTLED)

    def awaiting(self) -> tuple[str, ...]:
        """The reports the server is waiting for from the page now, by the message type that brings each (one of
        four shared tuples: every participant's last `state` message holds it)."""
        return _AWAITING[self.screening_pending(), self.preload_pending()]


_TOP_STATES: dict[tuple[str, ...], tuple[str, dict[str, str]]] = {}


def top_state(state: str | list[Any]) -> tuple[str, dict[str, str]]:
    """The top-level state and, inside the parallel preflight, each region's own state.

    The regions of a configuration are worked out once and shared by every caller (and every participant's
    `state` message holding them): read them, never change them."""
    if isinstance(state, str):
        return state.split(SEPARATOR, 1)[0], {}
    key = _key(state)
    found = _TOP_STATES.get(key)
    if found is None:
        regions = {}
        for leaf in key:
            parts = leaf.split(SEPARATOR)
            regions[parts[1]] = SEPARATOR.join(parts[2:])
        found = _TOP_STATES[key] = (key[-1].split(SEPARATOR, 1)[0], regions)
    return found


def active_states(state: str | list[Any]) -> set[str]:
    """Every state a model is in now, by full name: each region's leaf and all their parents."""
    names: set[str] = set()
    for leaf in _flatten(state):
        parts = leaf.split(SEPARATOR)
        names.update(SEPARATOR.join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def _key(state: Any) -> Any:
    """A configuration as a dict key: its name, or its leaves in order (a parallel state's list is flat here)."""
    if state.__class__ is str:
        return state
    leaves = tuple(state)
    if all(leaf.__class__ is str for leaf in leaves):
        return leaves
    return tuple(_flatten(state))


def _holds(condition: Any, model: Any, event: EventData) -> bool:
    """A guard as `Condition.check` evaluates it; one the model names (all of the table's) is called directly."""
    func = condition.func
    if func.__class__ is str and callable(method := getattr(model, func, None)):
        return bool(method(event) == condition.target)
    return bool(condition.check(event))


def _flatten(state: Any) -> Iterator[str]:
    if isinstance(state, str):
        yield state
    else:
        for item in state:
            yield from _flatten(item)
