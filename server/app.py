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
from .session import Emit, Session, Timeouts
from .store import DataStore, SessionLog


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


class Study:
    """The running study: the shared machine, the experiment and the data directory."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.machine = SessionMachine()
        self.store = DataStore(config.data_dir)
        self.runtime_config = dict(config.experiment.pyodide_config)
        self.store.describe_study({
            "wall": time.time(), "preflight_version": __version__,
            "experiment": config.experiment.describe(), "runtime": self.runtime_config,
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
        try:
            self.write_message(protocol.encode(message), binary=True)
        except tornado.websocket.WebSocketClosedError:
            pass

    def on_close(self) -> None:
        if self.session is not None:
            self.study.close(self.session)
            self.session = None


def make_app(config: Config) -> tornado.web.Application:
    """The whole server for one study; tests and `python -m server` both start it this way."""
    study = Study(config)
    return tornado.web.Application(
        [(r"/ws", ParticipantSocket, {"study": study})],
        websocket_ping_interval=config.ping_interval,
        websocket_ping_timeout=config.ping_timeout,
        websocket_max_message_size=config.max_message_bytes,
        study=study,
    )
