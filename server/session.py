"""One participant's session: the model the shared lifecycle machine drives.

It holds the participant's data and the callbacks the lifecycle table names. Messages
leave through its `Outbox`, records through `log`, snapshots through `save`, and timers
run on its `Timers`; it knows nothing about sockets or files.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from transitions.core import EventData

from statemachine import SEPARATOR, Fired, RegionGuards, SessionMachine, top_state, triggers

from . import views
from .clock import Clock, Timers
from .experiment import EndScene, Experiment, GymScene, Placed
from .matches import Lobby, Match
from .multiplayer import Multiplayer
from .outbox import Outbox
from .protocol import Code, Refusal, Writer

log = logging.getLogger("preflight")


@dataclass(frozen=True)
class Timeouts:
    screening: float = 60.0
    preload: float = 300.0
    grace: float = 120.0  # how long a dropped participant may take to come back


def token_digest(token: str) -> str:
    """Sessions are found by a digest of their token, so the data directory never holds a usable token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _discard(record: dict[str, Any]) -> None:
    pass


TIMEOUT_TRIGGERS = frozenset(t for t in triggers() if t.endswith("_timeout"))

NOTHING: Mapping[str, Any] = {}
"""What a session's maps start as: one shared empty map (a plain dict, which msgpack packs), not three per
participant; each is replaced, never changed in place, which also keeps the snapshot writer's by-reference
comparison true."""

MATCH_TYPES = ("match_ready", "input", "state_hash")
"""What a page sends about its match: the match checks each before the lifecycle takes it."""


class Session(RegionGuards):
    """A participant's place in the lifecycle and everything they produced on the way."""

    __slots__ = (
        "changed_at",
        "digest",
        "end_page",
        "experiment",
        "facts",
        "game_steps",
        "groups",
        "index",
        "lobby",
        "log",
        "machine",
        "match",
        "on_retire",
        "outbox",
        "outcome",
        "params",
        "participant_id",
        "place",
        "plan",
        "preload_result",
        "pyodide_config",
        "received_n",
        "rtt_ms",
        "save",
        "seed",
        "session_id",
        "state",
        "timed_out",
        "timeouts",
        "timers",
        "token",
        "user_agent",
        "verdict",
        "waiting_since",
    )

    def __init__(
        self,
        machine: SessionMachine,
        experiment: Experiment,
        clock: Clock,
        deliver: Writer | None = None,
        *,
        pyodide_config: dict[str, Any] | None = None,
        timeouts: Timeouts = Timeouts(),
        log: Writer = _discard,
        save: Callable[[Session], None] = lambda s: None,
        on_retire: Callable[[Session], None] = lambda s: None,
        user_agent: str = "",
        session_id: str = "",
        lobby: Lobby | None = None,
    ) -> None:
        self.session_id = session_id or secrets.token_hex(8)
        self.machine = machine
        self.experiment = experiment
        self.pyodide_config = pyodide_config if pyodide_config is not None else experiment.pyodide_config
        self.timeouts = timeouts
        self.timers = Timers(clock)
        self.outbox = Outbox(deliver)
        self.log = log
        self.save = save
        self.on_retire = on_retire
        self.token = secrets.token_urlsafe(24)
        self.digest = token_digest(self.token)
        self.user_agent = user_agent
        self.rtt_ms: float | None = None
        self.participant_id: str | None = None
        self.params: Mapping[str, str] = NOTHING
        self.seed: int | None = None
        self.plan: tuple[Placed, ...] = ()
        self.index = 0
        self.facts: Mapping[str, Any] = NOTHING
        self.verdict: tuple[str, ...] = ()
        self.preload_result: str | None = None  # the preload region's answer, kept once the region is left
        self.outcome: str | None = None
        self.received_n = 0  # the page's research messages are numbered; all up to this one are stored (or a gap)
        self.game_steps = 0  # steps received from the game in progress, checked against its `game_over`
        self.place: Any = None
        self.changed_at: float | None = None  # monotonic time of the last transition; each is in the records
        self.timed_out: tuple[str, ...] = ()  # the timeout triggers that moved this session, for the outcome counts
        self.lobby = lobby  # the study's waiting room and matches; only multiplayer scenes need it
        self.match: Match | None = None  # the multiplayer match this participant plays in now
        self.waiting_since: float | None = None  # when they joined the waiting room (kept across a drop)
        # scene id -> the match played there, for a matchmaker that reunites; replaced, never changed in place
        self.groups: Mapping[str, str] = NOTHING
        self.end_page: EndScene | None = None  # a multiplayer scene's own end page, when it ended the session
        machine.add_model(self)

    # -- driving --------------------------------------------------------------------------

    def fire(self, trigger: str, *args: Any) -> Fired:
        return self.machine.fire(self, trigger, *args)

    def reconnect(self, deliver: Writer, token: str, last_seq: int) -> None:
        """A connection came back with the token: send what it missed, or all it needs to redraw, then resume."""
        self.token = token
        self.record("resumed", last_seq=last_seq)
        redraw = not self.outbox.connect(deliver, last_seq)
        if redraw:
            self.outbox.post(views.config_message(self))
            self.outbox.post(views.scene_message(self))
        self.fire("resume")
        if self.match is not None:  # a reloaded page (last_seq 0) has lost its game too
            self.match.rejoin(self, redraw or last_seq == 0)
        self.publish()

    def connection_lost(self) -> Fired:
        """Park the session: in progress it waits for the participant, finished it lingers for a page that lost
        the last message."""
        self.outbox.disconnect()
        return self.fire("drop")

    def release(self) -> None:
        """Detach from the machine for good, with the outcome the table decided."""
        self.timers.cancel_all()
        self.machine.remove_model(self)
        self.record("closed", outcome=self.outcome, state=top_state(self.state)[0])
        self.save(self)

    def check(self, message: dict[str, Any]) -> Refusal | None:
        """A message the protocol accepts but this participant may not send now (a forged or late match input)."""
        if message["type"] not in MATCH_TYPES:
            return None
        if self.match is None:
            return Refusal(Code.NOT_ALLOWED, f"{message['type']} is not accepted now: no match is in progress for you")
        return self.match.check(self, message)

    def record(self, kind: str, **fields: Any) -> None:
        self.log({"kind": kind, "t": time.monotonic(), "wall": time.time(), **fields})

    @staticmethod
    def claimed_participant(hello: dict[str, Any]) -> str | None:
        """The participant id a `hello` names, if any; otherwise `begin` makes one up."""
        return hello.get("participant_id") or (hello.get("params") or {}).get("PROLIFIC_PID")

    # -- callbacks the lifecycle table names ---------------------------------------------------

    def begin(self, event: EventData) -> None:
        hello = _message(event)
        self.params = dict(hello["params"]) if hello.get("params") else NOTHING
        self.participant_id = self.claimed_participant(hello) or secrets.token_hex(8)
        self.seed = secrets.randbits(32)
        self.plan = self.experiment.plan(self.seed)
        self.record(
            "begin",
            experiment=self.experiment.name,
            participant_id=self.participant_id,
            params=self.params,
            seed=self.seed,
            order=[p.instance_id for p in self.plan],
            user_agent=self.user_agent,
        )
        self.outbox.post(views.config_message(self))
        self._activate()

    def skip_preload(self, event: EventData) -> None:
        if self.machine.allows(self, "skip_preload"):  # the cached guard check spares a trigger that would not move
            self.fire("skip_preload")

    def settle(self, event: EventData) -> None:
        if self.machine.allows(self, "settle"):
            self.fire("settle")

    def judge_screening(self, event: EventData) -> None:
        self.facts = _message(event)["facts"]
        self.verdict = self.experiment.screening.evaluate(self.facts, self.user_agent, self.rtt_ms)
        self.record("screening", facts=self.facts, rtt_ms=self.rtt_ms, verdict=list(self.verdict))

    def screening_ok(self, event: EventData) -> bool:
        return not self.verdict

    def screening_timed_out(self, event: EventData) -> None:
        self.verdict = ("timeout",)
        self.record("screening", facts={}, rtt_ms=self.rtt_ms, verdict=["timeout"])

    def reports_loading(self, event: EventData) -> bool:
        return bool(_message(event)["status"] == "loading")

    def reports_ready(self, event: EventData) -> bool:
        return bool(_message(event)["status"] == "ready")

    def reports_error(self, event: EventData) -> bool:
        return bool(_message(event)["status"] == "error")

    def note_preload(self, event: EventData) -> None:
        report = _data(event)
        self.record("preload", **report)

    def preload_timed_out(self, event: EventData) -> None:
        self.record("preload", status="error", error="timeout")

    def note_preload_result(self, event: EventData) -> None:
        self.preload_result = _dest(event).rsplit(SEPARATOR, 1)[-1]

    def runtime_not_needed(self, event: EventData) -> bool:
        return not self.pyodide_config["needs_pyodide"]

    def decide_outcome(self, event: EventData) -> None:
        if self.outcome is None:
            self.outcome = _dest(event)
            self.record("outcome", outcome=self.outcome)

    def retire(self, event: EventData) -> None:
        self.on_retire(self)

    def _next_type(self) -> str | None:
        nxt = self.index + 1
        return self.plan[nxt].scene_type if nxt < len(self.plan) else None

    def _next_multiplayer(self) -> bool:
        nxt = self.index + 1
        scene = self.plan[nxt].scene if nxt < len(self.plan) else None
        return isinstance(scene, GymScene) and scene.multiplayer is not None

    def next_is_game(self, event: EventData) -> bool:
        return self._next_type() == "game" and not self._next_multiplayer()

    def next_is_multiplayer(self, event: EventData) -> bool:
        return self._next_multiplayer()

    def next_is_static(self, event: EventData) -> bool:
        return self._next_type() == "static"

    def next_is_end(self, event: EventData) -> bool:
        return self._next_type() == "end"

    def activate_next(self, event: EventData) -> None:
        self.index += 1
        self._activate()

    # -- multiplayer: the waiting room and the match, which the lobby runs --------------------------

    def waiting_room(self) -> dict[str, Any] | None:
        """The waiting room as the page shows it, while this participant is in it."""
        if self.lobby is None or self.waiting_since is None:
            return None
        return self.lobby.waiting(self)

    def _the_lobby(self) -> Lobby:
        if self.lobby is None:
            raise RuntimeError("a multiplayer scene needs the study's lobby (Session(lobby=...))")
        return self.lobby

    def join_queue(self, event: EventData) -> None:
        lobby = self._the_lobby()
        lobby.join(self)
        waited = lobby.clock.time() - (self.waiting_since or lobby.clock.time())
        self.timers.start("wait_timeout", max(0.0, self._rules().wait_timeout_s - waited), self)

    def leave_queue(self, event: EventData) -> None:
        self.timers.cancel("wait_timeout")
        self._the_lobby().leave(self)

    def join_match(self, event: EventData) -> None:
        assert self.match is not None
        self.waiting_since = None
        agent = self.match.agent_of(self)
        self.record("match", match_id=self.match.match_id, agent=agent, scene_id=self.plan[self.index].instance_id)

    def no_match_plays_bots(self, event: EventData) -> bool:
        return self._rules().on_no_match == "bot"

    def no_match_ends_session(self, event: EventData) -> bool:
        return self._rules().on_no_match == "end"

    def play_with_bots(self, event: EventData) -> None:
        self.record("unmatched", scene_id=self.plan[self.index].instance_id, then="bot")
        self._the_lobby().solo(self)
        self.join_match(event)

    def note_unmatched(self, event: EventData) -> None:
        self.waiting_since = None
        self.record("unmatched", scene_id=self.plan[self.index].instance_id, then=self._rules().on_no_match)

    def forward_to_match(self, event: EventData) -> None:
        if self.match is not None:
            self.match.receive(self, _message(event))

    def leave_match(self, event: EventData) -> None:
        if self.match is not None:
            self.match.drop(self)

    def match_gone(self, event: EventData) -> bool:
        scene = self.plan[self.index].scene
        return isinstance(scene, GymScene) and scene.multiplayer is not None and self.match is None

    def note_match_gone(self, event: EventData) -> None:
        self.place = None
        self.record("match_gone", scene_id=self.plan[self.index].instance_id)

    def match_ends_session(self, event: EventData) -> bool:
        return self.match is not None and self.match.ends_sessions()

    def show_end_page(self, event: EventData) -> None:
        """A multiplayer scene ended this session: its own end page and completion code, not the study's."""
        rules = self._rules()
        self.end_page = EndScene(
            scene_id=f"{self.plan[self.index].instance_id}:end", html=rules.end_html, completion_code=rules.end_code
        )
        self.outbox.post(views.scene_message(self))

    def _rules(self) -> Multiplayer:
        scene = self.plan[self.index].scene
        assert isinstance(scene, GymScene) and scene.multiplayer is not None
        return scene.multiplayer

    def remember_place(self, event: EventData) -> None:
        self.place = self.state

    def restore_place(self, event: EventData) -> None:
        """Re-entering a state starts it afresh; put back the regions and timers it had when the socket dropped."""
        self.machine.set_state(self.place, self)
        if not self.screening_pending():
            self.timers.cancel("screening_timeout")
        if not self.preload_pending():
            self.timers.cancel("preload_timeout")
        self.place = None

    def start_grace_timer(self, event: EventData | None) -> None:
        self.timers.start("grace_expired", self.timeouts.grace, self)

    def cancel_grace_timer(self, event: EventData) -> None:
        self.timers.cancel("grace_expired")

    def note_game_event(self, event: EventData) -> None:
        self.record("game_event", scene_id=self.plan[self.index].instance_id, data=_data(event))

    def note_steps(self, event: EventData) -> None:
        steps = _message(event)["steps"]
        self.game_steps += len(steps)
        self.record("steps", scene_id=self.plan[self.index].instance_id, steps=steps)

    def note_game_over(self, event: EventData) -> None:
        """Record the page's summary, and whether every step it reports reached the server."""
        data = _data(event)
        reported = data.get("steps")
        check = {"reported_steps": reported, "received_steps": self.game_steps, "complete": reported == self.game_steps}
        scene_id = self.plan[self.index].instance_id
        self.record("game_over", scene_id=scene_id, data=data, check=check)
        if data.get("failed") is True:  # the researcher's code failed in a participant's page: say so where they look
            error = str(data.get("error"))[:300]
            log.warning("game %r failed in the page of participant %r: %r", scene_id, self.participant_id, error)
        if self.match is not None:
            self.match.game_over(self, data.get("frames"))
            self.match = None

    def start_screening_timer(self, event: EventData) -> None:
        self.timers.start("screening_timeout", self.timeouts.screening, self)

    def cancel_screening_timer(self, event: EventData) -> None:
        self.timers.cancel("screening_timeout")

    def start_preload_timer(self, event: EventData) -> None:
        self.timers.start("preload_timeout", self.timeouts.preload, self)

    def cancel_preload_timer(self, event: EventData) -> None:
        self.timers.cancel("preload_timeout")

    def record_transition(self, event: EventData) -> None:
        transition = event.transition
        if transition is None or transition.dest is None:
            return
        name = event.event.name if event.event else ""
        self.record("transition", event=name, source=transition.source, dest=transition.dest)
        self.changed_at = time.monotonic()
        if name in TIMEOUT_TRIGGERS:
            self.timed_out += (name,)

    def publish_state(self, event: EventData) -> None:
        if event.transition is not None and event.transition.dest is not None:
            self.publish()

    def publish(self, event: EventData | None = None) -> None:
        """Save the session, and show the participant their state unless it is exactly what they were last shown."""
        self.save(self)
        if self.outbox.deliver is not None:
            self.outbox.show(views.state_message(self))

    # -- helpers ----------------------------------------------------------------------------

    def episode_seeds(self) -> tuple[int, ...] | None:
        """This scene's episode seeds, if it is a game."""
        scene = self.plan[self.index].scene
        if not isinstance(scene, GymScene) or self.seed is None:
            return None
        return self.experiment.episode_seeds(self.seed, self.index, scene.episodes)

    def _activate(self) -> None:
        placed = self.plan[self.index]
        self.game_steps = 0
        seeds = self.episode_seeds()
        extra = {"seeds": seeds} if seeds is not None else {}
        self.record("scene", scene_id=placed.instance_id, scene_type=placed.scene_type, index=self.index, **extra)
        self.outbox.post(views.scene_message(self))

    def expired(self, timer: str) -> None:
        """Each of a session's timers is named after the trigger it fires."""
        self.fire(timer)


def _message(event: EventData) -> dict[str, Any]:
    """The decoded message that fired the trigger: every client trigger carries exactly one."""
    message: dict[str, Any] = next(iter(event.args))
    return message


def _dest(event: EventData) -> str:
    assert event.transition is not None
    return str(event.transition.dest)


def _data(event: EventData) -> dict[str, Any]:
    return {k: v for k, v in _message(event).items() if k not in ("type", "n")}
