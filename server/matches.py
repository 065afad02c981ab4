"""The waiting room and the matches in progress: the server sequences every frame of a multiplayer game.

The lobby queues participants by game scene, runs the scene's matchmaker on every arrival and on its own tick,
and starts a `Match` per group. A match is a model of the shared match machine (`statemachine/match.py`): it
closes one frame per tick from the inputs that arrived, fills the missing ones, sends each frame to every
player through their session's outbox and writes the one canonical record of the game.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from transitions.core import EventData

from statemachine import SEPARATOR, Fired
from statemachine.match import MatchMachine

from . import protocol
from .agents import Human
from .clock import Clock, Timers
from .experiment import Experiment, GymScene, Placed
from .multiplayer import Multiplayer, Waiter
from .outbox import Outbox
from .protocol import Code, Refusal, Writer

MATCHMAKING_S = 1.0  # the lobby's own tick: a group can form without anyone new arriving (a reconnect, a timer)
FINISH_GRACE_S = 30.0  # after the first game-over report, how long the others have to report theirs
AHEAD_FRAMES_EXTRA = 1.0  # seconds of frames an input may be ahead of the input delay


class Session(Protocol):
    """A participant as the lobby and their match see them (server/session.py's `Session`)."""

    session_id: str
    participant_id: str | None
    rtt_ms: float | None
    index: int
    outbox: Outbox
    match: Match | None
    groups: Mapping[str, str]
    waiting_since: float | None

    @property
    def plan(self) -> Sequence[Placed]: ...

    def fire(self, trigger: str, *args: Any) -> Fired: ...


def scene_of(session: Session) -> GymScene:
    scene = session.plan[session.index].scene
    assert isinstance(scene, GymScene) and scene.multiplayer is not None
    return scene


class Lobby:
    """Who waits for which game, and every match in progress; one per study."""

    def __init__(self, clock: Clock, open_log: Callable[[str], Writer], machine: MatchMachine | None = None) -> None:
        self.clock = clock
        self.open_log = open_log
        self.machine = machine if machine is not None else MatchMachine()
        self.queues: dict[str, dict[str, Session]] = {}  # scene id -> session id -> session, in arrival order
        self.matches: dict[str, Match] = {}
        self.outcomes: Counter[str] = Counter()  # how the matches that ended this run ended
        self._scheduled: object | None = None

    # -- the waiting room --------------------------------------------------------------------

    def join(self, session: Session) -> None:
        """Queue a participant for their scene's game; a participant back from a drop keeps their arrival time."""
        if session.waiting_since is None:
            session.waiting_since = self.clock.time()
        key = scene_of(session).scene_id
        self.queues.setdefault(key, {})[session.session_id] = session
        self._soon(0.0)

    def leave(self, session: Session) -> None:
        queue = self.queues.get(scene_of(session).scene_id, {})
        queue.pop(session.session_id, None)

    def waiting(self, session: Session) -> dict[str, Any]:
        """What the waiting room shows: how long they waited, how long they may still wait, who else waits."""
        scene = scene_of(session)
        assert scene.multiplayer is not None
        waited = self.clock.time() - (session.waiting_since or self.clock.time())
        return {
            "waited_s": round(waited, 1),
            "deadline_s": round(max(0.0, scene.multiplayer.wait_timeout_s - waited), 1),
            "waiting": len(self.queues.get(scene.scene_id, {})),
            "needed": group_size(scene),
        }

    def _soon(self, delay: float) -> None:
        if self._scheduled is None:
            self._scheduled = self.clock.call_later(delay, self._matchmake)

    def _matchmake(self) -> None:
        """Run every queue's matchmaker; come back on the lobby's tick while anyone waits."""
        self._scheduled = None
        for queue in list(self.queues.values()):
            if not queue:
                continue
            scene = scene_of(next(iter(queue.values())))
            assert scene.multiplayer is not None
            waiters = [_waiter(s) for s in queue.values()]
            taken: set[str] = set()
            for group in scene.multiplayer.matchmaker.groups(waiters, group_size(scene)):
                ids = [w.session_id for w in group]
                if len(ids) != group_size(scene) or taken & set(ids) or any(i not in queue for i in ids):
                    continue  # a matchmaker's mistake never starts a wrong match
                taken.update(ids)
                self.start([queue[i] for i in ids], scene)
        if any(self.queues.values()):
            self._soon(MATCHMAKING_S)

    # -- matches -----------------------------------------------------------------------------

    def start(self, sessions: list[Session], scene: GymScene) -> Match:
        """A match for this group (the empty human slots played by the scene's bot), its sessions moved into it."""
        match = Match(self, scene, sessions[0].plan[sessions[0].index].instance_id, sessions)
        self.matches[match.match_id] = match
        for session in sessions:
            session.match = match
            if session.fire("matched") is not Fired.ACCEPTED:  # only a waiting session can be matched
                session.match = None
        self.clock.call_later(0.0, match.start)
        return match

    def solo(self, session: Session) -> Match:
        """Nobody came in time and the scene says play with bots: a match of one participant."""
        match = Match(self, scene_of(session), session.plan[session.index].instance_id, [session])
        self.matches[match.match_id] = match
        session.match = match
        self.clock.call_later(0.0, match.start)
        return match

    def forget(self, match: Match) -> None:
        if self.matches.pop(match.match_id, None) is not None and match.outcome:
            self.outcomes[match.outcome] += 1
        self.machine.remove_model(match)

    def describe(self) -> dict[str, Any]:
        """What `/admin` shows: the waiting room (who, for how long) and the matches in progress."""
        now = self.clock.time()
        return {
            "waiting": [
                {
                    "scene_id": key,
                    "session_id": s.session_id,
                    "participant_id": s.participant_id,
                    "waited_s": round(now - (s.waiting_since or now), 1),
                    "needed": group_size(scene_of(s)),
                }
                for key, queue in self.queues.items()
                for s in queue.values()
            ],
            "matches": [m.describe() for m in self.matches.values()],
        }


def group_size(scene: GymScene) -> int:
    return sum(isinstance(agent, Human) for agent in (scene.agents or {}).values())


def _waiter(session: Session) -> Waiter:
    return Waiter(
        session_id=session.session_id,
        participant_id=session.participant_id or "",
        since=session.waiting_since or 0.0,
        rtt_ms=session.rtt_ms,
        groups=dict(session.groups),
    )


class Match:
    """One group playing one game scene; the shared match machine moves it, the lobby's clock ticks it."""

    def __init__(self, lobby: Lobby, scene: GymScene, instance_id: str, sessions: list[Session]) -> None:
        assert scene.multiplayer is not None and scene.agents is not None
        self.lobby = lobby
        self.scene = scene
        self.rules: Multiplayer = scene.multiplayer
        self.instance_id = instance_id
        self.match_id = secrets.token_hex(8)
        self.timers = Timers(lobby.clock)
        self.period = 1.0 / scene.fps
        humans = [agent for agent, kind in scene.agents.items() if isinstance(kind, Human)]
        self.players: dict[str, Session] = dict(zip(humans, sessions, strict=False))
        self.bots: set[str] = set(humans[len(sessions) :])  # slots nobody came for: the scene's bot plays them
        self.defaults = {a: kind.default_action for a, kind in scene.agents.items() if isinstance(kind, Human)}
        self.allowed = {
            a: {*map(_key, kind.keys.values()), _key(kind.default_action)}
            for a, kind in scene.agents.items()
            if isinstance(kind, Human)
        }
        self.last = dict(self.defaults)
        self.seed = secrets.randbits(32)
        self.seeds = Experiment.episode_seeds(self.seed, 0, scene.episodes)
        self.delay = self._input_delay()
        self.f = 0  # the last frame closed
        self.started_at = 0.0  # the clock's time of frame 0, so that frame f closes at started_at + f * period
        self.turn_since = 0.0
        self.inputs: dict[int, dict[str, Any]] = {}
        self.frames: list[dict[str, Any]] = []
        self.ready: set[str] = set()
        self.absent: dict[str, float] = {}
        self.reloading: set[str] = set()  # back on a reloaded page, still rebuilding the game
        self.reports: dict[str, int] = {}
        self.hashes: dict[int, dict[str, str]] = {}
        self.final: int | None = None  # the last frame, once a page has reported its game over
        self.report_deadline_passed = False
        self.outcome: str | None = None
        self.state: Any = None
        self.log = lobby.open_log(self.match_id)
        lobby.machine.add_model(self)
        self.record(
            "match",
            match_id=self.match_id,
            scene_id=instance_id,
            environment=scene.environment,
            env_kwargs=dict(scene.env_kwargs),
            participants={a: _who(s) for a, s in self.players.items()},
            bots=sorted(self.bots),
            agents={a: kind.payload() for a, kind in scene.agents.items()},
            seed=self.seed,
            seeds=self.seeds,
            episodes=scene.episodes,
            max_steps=scene.max_steps,
            input_delay=self.delay,
            fps=scene.fps,
            input=scene.input,
            multiplayer=self.rules.describe(),
            bot=self.rules.bot.payload(),
        )

    def fire(self, trigger: str, *args: Any) -> Fired:
        return self.lobby.machine.fire(self, trigger, *args)

    def start(self) -> None:
        self.fire("start")

    def record(self, kind: str, **fields: Any) -> None:
        self.log({"kind": kind, "t": time.monotonic(), "wall": time.time(), **fields})

    def agent_of(self, session: Session) -> str | None:
        return next((a for a, s in self.players.items() if s is session), None)

    def _input_delay(self) -> int:
        """ "auto": the frames one round trip of the slowest player takes, plus one, fixed for the whole match."""
        if self.scene.input == "turn":
            return 1
        if self.rules.input_delay != "auto":
            return int(self.rules.input_delay)
        rtt = max((s.rtt_ms or 0.0 for s in self.players.values()), default=0.0)
        return math.ceil(rtt / (1000.0 * self.period)) + 1

    # -- what the pages send -----------------------------------------------------------------

    def check(self, session: Session, message: dict[str, Any]) -> Refusal | None:
        """Refuse an input that is not this page's to give, or not for a frame still open."""
        agent = self.agent_of(session)
        kind = message["type"]
        if agent is None or not self._open():
            return Refusal(Code.NOT_ALLOWED, f"{kind} is not accepted now: no match is in progress for you")
        if message.get("match_id", self.match_id) != self.match_id:
            return Refusal(Code.NOT_ALLOWED, f"{kind}: that match is over")
        if kind != "input":
            return None
        if message.get("agent", agent) != agent:
            return Refusal(Code.NOT_YOUR_AGENT, f"input: you play {agent}, not {str(message['agent'])[:64]}")
        f = message["f"]
        if f <= self.f:
            return Refusal(Code.FRAME_CLOSED, f"input: frame {f} is closed (the last closed is {self.f})")
        ahead = self.delay + math.ceil(AHEAD_FRAMES_EXTRA / self.period)
        if f > self.f + ahead:
            return Refusal(Code.FRAME_AHEAD, f"input: frame {f} is more than {ahead} frames ahead of {self.f}")
        if _key(message["action"]) not in self.allowed[agent]:
            return Refusal(Code.BAD_MESSAGE, f"input: {str(message['action'])[:64]} is not one of {agent}'s actions")
        return None

    def receive(self, session: Session, message: dict[str, Any]) -> None:
        agent = self.agent_of(session)
        assert agent is not None
        kind = message["type"]
        if kind == "input":
            self.inputs.setdefault(message["f"], {}).setdefault(agent, message["action"])
        elif kind == "match_ready":
            if agent in self.reloading:
                self.reloading.discard(agent)
                self.fire("rejoin", agent)
            self.fire("match_ready", agent)
        elif kind == "state_hash":
            self.note_hash(agent, message["f"], message["hash"])

    def note_hash(self, agent: str, f: int, value: str) -> None:
        self.record("hash", agent=agent, f=f, hash=value)
        seen = self.hashes.setdefault(f, {})
        seen[agent] = value
        if len(set(seen.values())) > 1:
            self.record("desync", f=f, hashes=dict(seen))
            self.fire("mismatch")

    def game_over(self, session: Session, frames: Any) -> None:
        agent = self.agent_of(session)
        if agent is not None and isinstance(frames, int):
            self.fire("report", agent, frames)

    def drop(self, session: Session) -> None:
        agent = self.agent_of(session)
        if agent is not None and self._open():
            self.fire("drop", agent)

    def rejoin(self, session: Session, redraw: bool) -> None:
        """A player back within the deadline; a page that lost everything gets the whole match again."""
        agent = self.agent_of(session)
        if agent is None:
            return
        if redraw:  # a reloaded page rebuilds the game first: it counts as back once it says match_ready
            self.ready.discard(agent)
            self.reloading.add(agent)
            session.outbox.post(self.message_for(agent))
            if self.timers.running("reconnect_timeout"):  # rebuilding may take as long as the start did
                self.timers.start("reconnect_timeout", self.rules.start_timeout_s, self)
        elif self._open():
            self.fire("rejoin", agent)
        if self.outcome is not None:
            session.outbox.post(protocol.match_end(self.match_id, self.outcome, self.final or self.f))

    def _open(self) -> bool:
        return self.outcome is None

    def message_for(self, agent: str) -> dict[str, Any]:
        return protocol.match(
            match_id=self.match_id,
            scene_id=self.instance_id,
            agent=agent,
            agents={a: kind.payload() for a, kind in (self.scene.agents or {}).items()},
            seeds=self.seeds,
            input_delay=self.delay,
            fps=self.scene.fps,
            hash_every=self.rules.hash_every,
            frames=[{k: v for k, v in frame.items() if k != "type"} for frame in self.frames],
        )

    # -- callbacks the match table names ----------------------------------------------------------

    def announce(self, event: EventData) -> None:
        for agent, session in self.players.items():
            session.outbox.post(self.message_for(agent))

    def start_start_timer(self, event: EventData) -> None:
        self.timers.start("start_timeout", self.rules.start_timeout_s, self)

    def cancel_start_timer(self, event: EventData) -> None:
        self.timers.cancel("start_timeout")

    def note_ready(self, event: EventData) -> None:
        self.ready.add(_args(event)[0])

    def begin_if_ready(self, event: EventData) -> None:
        if self.lobby.machine.allows(self, "begin"):
            self.fire("begin")

    def everyone_ready(self, event: EventData) -> bool:
        return set(self.players) <= self.ready and not self.absent

    def start_ticking(self, event: EventData) -> None:
        now = self.lobby.clock.time()
        self.started_at = now - self.f * self.period  # after a pause, the clock goes on from the frame it stopped at
        self.turn_since = now
        self._schedule()

    def stop_ticking(self, event: EventData) -> None:
        self.timers.cancel("tick")

    def _schedule(self) -> None:
        now = self.lobby.clock.time()
        due = self.started_at + (self.f + 1) * self.period
        if now - due > self.period:  # the loop was held (a stall): go on at the match's pace, not in a burst of
            self.record("slip", f=self.f, behind_s=round(now - due, 3))  # frames whose inputs could not arrive
            self.started_at = now - self.f * self.period
            due = now + self.period
        self.timers.start("tick", max(0.0, due - now), self)

    def expired(self, timer: str) -> None:
        """A timer of the match's is due: the frame clock and the report deadline run here, the rest are triggers."""
        if timer == "tick":
            self._tick()
        elif timer == "finish":
            self._reports_overdue()
        else:
            self.fire(timer)

    def _tick(self) -> None:
        before = self.f
        self.fire("tick")
        if not self.lobby.machine.candidates("tick", self.state):
            return  # paused or ended: the next start_ticking schedules again
        if self.f == before:  # nothing was due (a turn not taken yet, the last frame reached): look next period
            self.timers.start("tick", self.period, self)
        else:
            self._schedule()

    def frame_due(self, event: EventData) -> bool:
        """Held and pressed keys: every tick; turns: once every human moved or the turn's time is up."""
        if self.final is not None and self.f >= self.final:
            return False
        if self.scene.input != "turn":
            return True
        moved = self.inputs.get(self.f + 1, {})
        humans = set(self.players) - self.bots
        return humans <= set(moved) or self.lobby.clock.time() - self.turn_since >= self.rules.turn_timeout_s

    def close_frame(self, event: EventData) -> None:
        """Frame f: each human slot's input if it came in time, else the filled action, flagged."""
        f = self.f + 1
        arrived = self.inputs.pop(f, {})
        actions: dict[str, Any] = {}
        filled: list[str] = []
        for agent in self.players:
            if agent in self.bots:
                continue
            if agent in arrived:
                actions[agent] = arrived[agent]
            else:
                actions[agent] = self.last[agent] if self.scene.input == "held" else self.defaults[agent]
                filled.append(agent)
            self.last[agent] = actions[agent]
        self.f = f
        self.turn_since = self.lobby.clock.time()
        message = protocol.frame(f, actions, filled, sorted(self.bots))
        self.frames.append(message)
        self.record("frame", f=f, actions=actions, filled=filled, bots=sorted(self.bots))
        for agent, session in self.players.items():
            if agent not in self.bots:
                session.outbox.post(message)

    def note_drop(self, event: EventData) -> None:
        agent = _args(event)[0]
        self.absent.setdefault(agent, self.lobby.clock.time())
        self.record("presence", agent=agent, status="reconnecting")
        self._tell_others(agent, "reconnecting", self.rules.reconnect_timeout_s)

    def note_rejoin(self, event: EventData) -> None:
        agent = _args(event)[0]
        if self.absent.pop(agent, None) is not None:
            self.record("presence", agent=agent, status="connected")
            self._tell_others(agent, "connected")

    def everyone_present(self, event: EventData) -> bool:
        return not self.absent

    def start_reconnect_timer(self, event: EventData) -> None:
        self.timers.start("reconnect_timeout", self.rules.reconnect_timeout_s, self)

    def cancel_reconnect_timer(self, event: EventData) -> None:
        self.timers.cancel("reconnect_timeout")

    def bot_takes_over(self, event: EventData) -> bool:
        return self.rules.on_partner_loss == "bot"

    def replace_absent(self, event: EventData) -> None:
        for agent in list(self.absent):
            self.bots.add(agent)
            self.record("presence", agent=agent, status="bot")
            self._tell_others(agent, "bot")
        self._let_go_of_absent()

    def note_left(self, event: EventData) -> None:
        for agent in self.absent:
            self.record("presence", agent=agent, status="left")
            self._tell_others(agent, "left")

    def _let_go_of_absent(self) -> None:
        """Those not back by the deadline leave the match; their session ends as abandoned."""
        for agent in list(self.absent):
            session = self.players[agent]
            session.match = None
            if session.fire("partner_deadline") is not Fired.ACCEPTED:  # connected, but never rebuilt the game
                session.outbox.post(protocol.match_end(self.match_id, "partner_left", self.f))
        self.absent.clear()
        self.reloading.clear()

    def note_report(self, event: EventData) -> None:
        agent, frames = _args(event)
        self.reports[agent] = frames
        self.record("report", agent=agent, frames=frames)
        if self.final is None:
            self.final = frames
            self.timers.start("finish", FINISH_GRACE_S, self)

    def _reports_overdue(self) -> None:
        self.report_deadline_passed = True
        self.fire("finish")

    def finish(self, event: EventData) -> None:
        if self.lobby.machine.allows(self, "finish"):
            self.fire("finish")

    def _reported(self) -> bool:
        expected = set(self.players) - self.bots
        return expected <= set(self.reports) or self.report_deadline_passed

    def all_agree(self, event: EventData) -> bool:
        return self._reported() and len(set(self.reports.values())) == 1

    def reports_differ(self, event: EventData) -> bool:
        return self._reported() and len(set(self.reports.values())) > 1

    def end_match(self, event: EventData) -> None:
        """Whatever ended it: the pages are told, the record closed, the lobby lets go."""
        self.outcome = str(event.transition.dest if event.transition else "").rsplit(SEPARATOR, 1)[-1]
        self.timers.cancel_all()
        last = self.final if self.outcome == "completed" and self.final is not None else self.f
        self.record("end", outcome=self.outcome, frames=last, filled=self._filled_count())
        for agent, session in self.players.items():
            if agent in self.bots:
                continue
            session.groups = {**session.groups, self.scene.scene_id: self.match_id}
            if session.plan[session.index].instance_id == self.instance_id:  # still at this game (reported or not)
                session.outbox.post(protocol.match_end(self.match_id, self.outcome, last))
        if self.outcome == "partner_left":
            self._let_go_of_absent()
        self.lobby.forget(self)
        close = getattr(self.log, "close", None)
        if close is not None:
            close()

    def record_transition(self, event: EventData) -> None:
        transition = event.transition
        if transition is not None and transition.dest is not None:
            name = event.event.name if event.event else ""
            self.record("transition", event=name, source=transition.source, dest=transition.dest)

    def ends_sessions(self) -> bool:
        """A partner lost for good ends the others' sessions too, when the scene says so."""
        return self.outcome == "partner_left" and self.rules.on_partner_loss == "end"

    def _tell_others(self, agent: str, status: str, deadline_s: float | None = None) -> None:
        for other, session in self.players.items():
            if other != agent and other not in self.bots and other not in self.absent:
                session.outbox.post(protocol.partner_status(agent, status, deadline_s))

    def _filled_count(self) -> int:
        return sum(len(frame["filled"]) for frame in self.frames)

    def describe(self) -> dict[str, Any]:
        return {
            "match_id": self.match_id,
            "scene_id": self.instance_id,
            "state": self.state,
            "players": {a: s.participant_id for a, s in self.players.items() if a not in self.bots},
            "sessions": {a: s.session_id for a, s in self.players.items() if a not in self.bots},
            "bots": sorted(self.bots),
            "frame": self.f,
            "absent": sorted(self.absent),
        }


def _who(session: Session) -> dict[str, Any]:
    return {"session_id": session.session_id, "participant_id": session.participant_id}


def _key(action: Any) -> Any:
    """A hashable stand-in for an action, so that lists and maps can be compared with the allowed ones."""
    if isinstance(action, list):
        return tuple(_key(a) for a in action)
    if isinstance(action, dict):
        return tuple(sorted((k, _key(v)) for k, v in action.items()))
    return action


def _args(event: EventData) -> list[Any]:
    """What the lobby fired the trigger with: the agent, and for a report its last frame."""
    return list(event.args)
