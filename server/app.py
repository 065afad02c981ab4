"""The Tornado application: thin handlers over one shared lifecycle machine."""

from __future__ import annotations

import contextlib
import hmac
import logging
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tornado.web
import tornado.websocket
from tornado.ioloop import IOLoop

from statemachine import SessionMachine

from . import __version__, protocol
from .admin import admin_routes, log_request, new_admin_token, tally
from .experiment import Experiment
from .protocol import Close, Code, Refusal
from .runtime import DEFAULT_PYODIDE_DIR, DEFAULT_WHEELHOUSE, MSGPACK_DIR, SimpleIndex, VersionedFiles, load_runtime
from .session import Session, Timeouts, token_digest
from .store import DataStore, SessionLog, record_frame

log = logging.getLogger("preflight")


@dataclass(frozen=True)
class Config:
    """Everything the server is told at start-up; built once from the command line."""

    experiment: Experiment
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8888
    timeouts: Timeouts = field(default_factory=Timeouts)
    ping_interval: float = 15.0
    ping_timeout: float = 15.0  # Tornado caps it at the interval
    max_message_bytes: int = 64 * 1024  # larger frames are refused; above 4x this the connection is closed
    max_refusals: int = 20
    messages_per_second: float = 50.0  # per connection, with bursts of twice as many
    allowed_origins: tuple[str, ...] = ()  # besides the server's own origin, e.g. "https://study.example.org"
    pyodide_dir: Path = DEFAULT_PYODIDE_DIR
    pyodide_url: str | None = None  # a Pyodide distribution hosted elsewhere (e.g. the full release)
    wheelhouse: Path = DEFAULT_WHEELHOUSE
    admin_token: str = field(default_factory=new_admin_token, repr=False)  # never a default password


CLIENT_DIR = Path(__file__).resolve().parent.parent / "client" / "web"


class Study:
    """The running study: the shared machine, the experiment, the data directory and who is connected."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.machine = SessionMachine()
        self.store = DataStore(config.data_dir)
        self.outcomes: Counter[str] = Counter()  # what ended sessions added up to (admin.tally)
        self.runtime = load_runtime(config.pyodide_dir, config.wheelhouse, config.pyodide_url)
        self.runtime_config = {**config.experiment.pyodide_config, **self.runtime.page_config()}
        self.sessions: dict[str, Session] = {}  # by session id: live and parked sessions
        self.by_digest: dict[str, Session] = {}
        self.links: dict[str, ParticipantSocket] = {}  # session id -> the one connection driving it
        self.participants: dict[str, str] = {}  # participant id -> outcome ("" while in progress)
        self.store.describe_study(
            {
                "wall": time.time(),
                "preflight_version": __version__,
                "experiment": config.experiment.describe(),
                "runtime": self.runtime.describe(),
            }
        )
        self._restore()

    def admit(self, hello: dict[str, Any]) -> Refusal | None:
        """Recruitment platforms resend links: a participant id may start only once, unless it was abandoned."""
        participant = Session.claimed_participant(hello)
        if participant is None or participant not in self.participants:
            return None
        outcome = self.participants[participant] or "in progress"
        return Refusal(Code.ALREADY_PARTICIPATED, f"participant {participant} already has a session ({outcome})")

    def open(self, link: ParticipantSocket) -> Session:
        """A new session for a connection that said `hello`; the caller fires it once the frame is recorded."""
        session_id, log = self.store.open_session()
        session = Session(
            self.machine,
            self.config.experiment,
            IOLoop.current(),
            link.send,
            runtime_config=self.runtime_config,
            timeouts=self.config.timeouts,
            sink=log,
            persist=self.store.save_snapshot,
            ended=self.end,
            user_agent=link.user_agent,
            session_id=session_id,
        )
        session.rtt_ms = link.rtt_ms
        self._track(session)
        self.links[session_id] = link
        return session

    def admitted(self, session: Session) -> None:
        self.participants.setdefault(session.participant_id or "", "")

    def find(self, token: str) -> Session | None:
        digest = token_digest(token)
        session = self.by_digest.get(digest)
        return session if session is not None and hmac.compare_digest(session.digest, digest) else None

    def resume(self, session: Session, link: ParticipantSocket, token: str, last_seq: int) -> None:
        """The newest connection wins: a second tab with the same token takes the session over."""
        previous = self.links.get(session.session_id)
        self.links[session.session_id] = link
        if previous is not None and previous is not link:
            previous.close(Close.TAKEN_OVER, "this session was resumed from another connection")
        session.attach(link.send, token, last_seq)

    def drop(self, session: Session, link: ParticipantSocket) -> None:
        """A connection closed: park its session for the grace period; a finished one stays resumable as long,
        so a page that lost the last message can still show the completion code."""
        if self.links.get(session.session_id) is not link:
            return
        del self.links[session.session_id]
        if not session.detach():
            self.participants[session.participant_id or ""] = session.outcome or ""
            IOLoop.current().call_later(self.config.timeouts.grace, self._linger_over, session)

    def _linger_over(self, session: Session) -> None:
        if session.session_id not in self.links:
            self.end(session)

    def end(self, session: Session) -> None:
        if self.sessions.pop(session.session_id, None) is None:
            return
        self.by_digest.pop(session.digest, None)
        self.links.pop(session.session_id, None)
        session.close()
        if session.participant_id is not None:
            if session.outcome == "abandoned":
                self.participants.pop(session.participant_id, None)
            else:
                self.participants[session.participant_id] = session.outcome or ""
        self.outcomes.update(tally(session))
        if isinstance(session.sink, SessionLog):
            session.sink.close()

    def _track(self, session: Session) -> None:
        self.sessions[session.session_id] = session
        self.by_digest[session.digest] = session

    def _restore(self) -> None:
        """Sessions in progress when the server last stopped are parked, waiting for their participants."""
        for saved in self.store.snapshots():
            if saved.get("outcome"):
                if saved["outcome"] != "abandoned" and saved.get("participant_id"):
                    self.participants[saved["participant_id"]] = saved["outcome"]
                continue
            if saved.get("seed") is None:
                continue
            _, sink = self.store.open_session(saved["session_id"])
            try:
                session = Session.restore(
                    saved,
                    self.machine,
                    self.config.experiment,
                    IOLoop.current(),
                    runtime_config=self.runtime_config,
                    timeouts=self.config.timeouts,
                    sink=sink,
                    persist=self.store.save_snapshot,
                    ended=self.end,
                )
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("not resuming session %s: %s", saved.get("session_id"), exc)
                sink.close()
                continue
            self._track(session)
            self.participants[session.participant_id or ""] = ""
        if self.sessions:
            log.info(
                "%d sessions from before the restart wait %.0f s for their participants",
                len(self.sessions),
                self.config.timeouts.grace,
            )


class RateLimit:
    """A token bucket: `rate` messages a second on average, bursts of twice that."""

    __slots__ = ("last", "rate", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = 2 * rate
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(2 * self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class ParticipantSocket(tornado.websocket.WebSocketHandler):
    """`/ws`: decode, validate, trigger; everything else is the session's and the machine's."""

    def initialize(self, study: Study) -> None:
        self.study = study
        self.session: Session | None = None
        self.refusals = 0
        self.rtt_ms: float | None = None
        self.limit = RateLimit(study.config.messages_per_second)

    @property
    def user_agent(self) -> str:
        return self.request.headers.get("User-Agent", "")

    def check_origin(self, origin: str) -> bool:
        return origin in self.study.config.allowed_origins or super().check_origin(origin)

    def open(self) -> None:
        self.ping(struct.pack("!d", time.monotonic()))

    def on_pong(self, data: bytes) -> None:
        if len(data) == 8:
            self.rtt_ms = (time.monotonic() - struct.unpack("!d", data)[0]) * 1000.0
            if self.session is not None:
                self.session.rtt_ms = self.rtt_ms

    def on_message(self, frame: bytes | str) -> None:
        if not self.limit.take():
            return self.refuse(Refusal(Code.RATE_LIMITED, "too many messages; slow down"))
        if len(frame) > self.study.config.max_message_bytes:
            return self.refuse(
                Refusal(Code.TOO_LARGE, f"frames may be at most {self.study.config.max_message_bytes} bytes")
            )
        message = protocol.decode(frame)
        if self.session is not None:
            self.record_in(frame, message)
        if isinstance(message, Refusal):
            return self.refuse(message)
        if message["type"] == "ack":
            if self.session is not None:
                self.session.outbox.ack(message["seq"])
            return
        if self.session is None:
            return self.hello(message, frame)
        moved = self.session.fire(message["type"], message)
        if moved is None:
            return self.refuse(Refusal(Code.NOT_ALLOWED, f"{message['type']} is not accepted now"))
        if moved is False:
            return self.refuse(Refusal(Code.GATED, f"{message['type']} must wait: the participant may not move on yet"))
        self.refusals = 0

    def hello(self, message: dict[str, Any], frame: bytes | str) -> None:
        """The first message: a new participant, or a known one coming back with their token."""
        if message["type"] != "hello":
            return self.refuse(Refusal(Code.NOT_ALLOWED, f"{message['type']} before hello"))
        token = message.get("resume_token")
        if token is not None:
            session = self.study.find(token)
            if session is None:
                return self.refuse(Refusal(Code.BAD_TOKEN, "no session to resume with this token; it may have ended"))
            self.session = session
            self.record_in(frame, message)
            self.study.resume(session, self, token, message.get("last_seq", 0))
        else:
            refusal = self.study.admit(message)
            if refusal is not None:
                return self.refuse(refusal)
            self.session = self.study.open(self)
            self.record_in(frame, message)
            self.session.fire("hello", message)
            self.study.admitted(self.session)
        self.refusals = 0

    def record_in(self, frame: bytes | str, message: dict[str, Any] | Refusal) -> None:
        assert self.session is not None
        if isinstance(message, Refusal):
            return record_frame(self.session.sink, "in", frame, False)
        stored = protocol.redacted(message)
        record_frame(self.session.sink, "in", frame if stored is message else protocol.encode(stored))

    def refuse(self, refusal: Refusal) -> None:
        state = self.session.snapshot()["state"] if self.session is not None else "connected"
        self.send(protocol.error(refusal, state))
        self.refusals += 1
        if self.refusals >= self.study.config.max_refusals:
            self.close(Close.POLICY, f"{self.refusals} refused messages in a row")

    def send(self, message: dict[str, Any]) -> None:
        frame = protocol.encode(message)
        if self.session is not None:
            stored = protocol.redacted(message)
            record_frame(self.session.sink, "out", frame if stored is message else protocol.encode(stored))
        with contextlib.suppress(tornado.websocket.WebSocketClosedError):
            self.write_message(frame, binary=True)

    def on_close(self) -> None:
        if self.session is not None:
            self.study.drop(self.session, self)
            self.session = None


class ParticipantPage(tornado.web.RequestHandler):
    """`/`: the participant's page; URL parameters (PROLIFIC_PID, ...) are read by the page itself."""

    def get(self) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.render(str(CLIENT_DIR / "index.html"))


def make_app(config: Config) -> tornado.web.Application:
    """The whole server for one study; tests and `python -m server` both start it this way."""
    study = Study(config)
    routes: list[Any] = [
        (r"/", ParticipantPage),
        (r"/ws", ParticipantSocket, {"study": study}),
        (r"/client/(.*)", tornado.web.StaticFileHandler, {"path": str(CLIENT_DIR)}),
        (r"/vendor/msgpack/(.*)", tornado.web.StaticFileHandler, {"path": str(MSGPACK_DIR)}),
        (r"/simple/?", SimpleIndex, {"runtime": study.runtime}),
        (r"/simple/([^/]+)/?", SimpleIndex, {"runtime": study.runtime}),
        (r"/wheels/(.*)", tornado.web.StaticFileHandler, {"path": str(config.wheelhouse)}),
        *admin_routes(study),
    ]
    if study.runtime.pyodide_dir is not None:
        routes.append(
            (rf"/pyodide/{study.runtime.version}/(.*)", VersionedFiles, {"path": str(study.runtime.pyodide_dir)})
        )
    return tornado.web.Application(
        routes,
        compress_response=True,
        log_function=log_request,
        websocket_ping_interval=config.ping_interval,
        websocket_ping_timeout=config.ping_timeout,
        websocket_max_message_size=4 * config.max_message_bytes,
        study=study,
    )
