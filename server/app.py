"""The Tornado application: thin handlers over one shared lifecycle machine."""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tornado.web
import tornado.websocket
from tornado.ioloop import IOLoop

from statemachine import SessionMachine

from . import __version__, protocol
from .experiment import Experiment
from .protocol import Close, Code, Refusal
from .runtime import (DEFAULT_PYODIDE_DIR, DEFAULT_WHEELHOUSE, MSGPACK_DIR, SimpleIndex, VersionedFiles,
                      load_runtime)
from .session import Emit, Session, Timeouts
from .store import DataStore, SessionLog, record_frame


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
    max_message_bytes: int = 64 * 1024
    max_refusals: int = 20
    pyodide_dir: Path = DEFAULT_PYODIDE_DIR
    pyodide_url: str | None = None  # a Pyodide distribution hosted elsewhere (e.g. the full release)
    wheelhouse: Path = DEFAULT_WHEELHOUSE

CLIENT_DIR = Path(__file__).resolve().parent.parent / "client" / "web"


class Study:
    """The running study: the shared machine, the experiment and the data directory."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.machine = SessionMachine()
        self.store = DataStore(config.data_dir)
        self.runtime = load_runtime(config.pyodide_dir, config.wheelhouse, config.pyodide_url)
        self.runtime_config = {**config.experiment.pyodide_config, **self.runtime.page_config()}
        self.store.describe_study({
            "wall": time.time(), "preflight_version": __version__,
            "experiment": config.experiment.describe(), "runtime": self.runtime.describe(),
        })

    def open(self, emit: Emit, user_agent: str) -> Session:
        session_id, log = self.store.open_session()
        return Session(self.machine, self.config.experiment, IOLoop.current(), emit, runtime_config=self.runtime_config,
                       timeouts=self.config.timeouts, sink=log, user_agent=user_agent, session_id=session_id)

    def close(self, session: Session) -> None:
        session.close()
        if isinstance(session.sink, SessionLog):
            session.sink.close()


class ParticipantSocket(tornado.websocket.WebSocketHandler):
    """`/ws`: decode, validate, trigger; everything else is the session's and the machine's."""

    def initialize(self, study: Study) -> None:
        self.study = study
        self.session: Session | None = None
        self.refusals = 0

    def open(self) -> None:
        self.session = self.study.open(self.send, self.request.headers.get("User-Agent", ""))
        self.ping(struct.pack("!d", time.monotonic()))

    def on_pong(self, data: bytes) -> None:
        if len(data) == 8 and self.session is not None:
            self.session.rtt_ms = (time.monotonic() - struct.unpack("!d", data)[0]) * 1000.0

    def on_message(self, frame: bytes | str) -> None:
        assert self.session is not None
        message = protocol.decode(frame)
        record_frame(self.session.sink, "in", frame, not isinstance(message, Refusal))
        if isinstance(message, Refusal):
            return self.refuse(message)
        if "resume_token" in message:
            return self.refuse(Refusal(Code.BAD_TOKEN, "no session to resume with this token"))
        moved = self.session.fire(message["type"], message)
        if moved is None:
            return self.refuse(Refusal(Code.NOT_ALLOWED, f"{message['type']} is not accepted now"))
        if moved is False:
            return self.refuse(Refusal(Code.GATED, f"{message['type']} must wait: the participant may not move on yet"))
        self.refusals = 0

    def refuse(self, refusal: Refusal) -> None:
        assert self.session is not None
        self.send(protocol.error(refusal, self.session.snapshot()["state"]))
        self.refusals += 1
        if self.refusals >= self.study.config.max_refusals:
            self.close(Close.POLICY, f"{self.refusals} refused messages in a row")

    def send(self, message: dict[str, Any]) -> None:
        frame = protocol.encode(message)
        if self.session is not None:
            record_frame(self.session.sink, "out", frame)
        try:
            self.write_message(frame, binary=True)
        except tornado.websocket.WebSocketClosedError:
            pass

    def on_close(self) -> None:
        if self.session is not None:
            self.study.close(self.session)
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
    ]
    if study.runtime.pyodide_dir is not None:
        routes.append((rf"/pyodide/{study.runtime.version}/(.*)", VersionedFiles,
                       {"path": str(study.runtime.pyodide_dir)}))
    return tornado.web.Application(
        routes,
        compress_response=True,
        websocket_ping_interval=config.ping_interval,
        websocket_ping_timeout=config.ping_timeout,
        websocket_max_message_size=config.max_message_bytes,
        study=study,
    )
