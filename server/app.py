"""The Tornado application: thin handlers over one shared lifecycle machine; `make_app` wires them to a study."""

from __future__ import annotations

import contextlib
import re
import struct
import time
from pathlib import Path
from typing import Any

import tornado.web
import tornado.websocket
from tornado.log import access_log

from statemachine import INITIAL, Fired, top_state

from . import protocol
from .admin import admin_routes
from .config import Config
from .early_start import AFTER_CONFIG, PageRuntime, page_runtime
from .memory_snapshot import SNAPSHOT_URL, offered, wheel_digests
from .page_module import page_module
from .precompress import EncodedFiles, Precompressed
from .protocol import Close, Code, Refusal
from .runtime import MSGPACK_DIR, SimpleIndex, VersionedFiles
from .session import Session
from .store import record_frame
from .study import Study

__all__ = ["Config", "make_app"]

SERVER_DIR = Path(__file__).resolve().parent
CLIENT_DIR = SERVER_DIR.parent / "client" / "web"


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
        fired = self.session.fire(message["type"], message)
        if fired is Fired.NOT_ACCEPTED:
            return self.refuse(Refusal(Code.NOT_ALLOWED, f"{message['type']} is not accepted now"))
        if fired is Fired.HELD_BACK:
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
            return record_frame(self.session.log, "in", frame, False)
        stored = protocol.redacted(message)
        record_frame(self.session.log, "in", frame if stored is message else protocol.encode(stored))

    def refuse(self, refusal: Refusal) -> None:
        state = top_state(self.session.state)[0] if self.session is not None else INITIAL
        self.send(protocol.error(refusal, state))
        self.refusals += 1
        if self.refusals >= self.study.config.max_refusals:
            self.close(Close.POLICY, f"{self.refusals} refused messages in a row")

    def send(self, message: dict[str, Any]) -> None:
        frame = protocol.encode(message)
        if self.session is not None:
            stored = protocol.redacted(message)
            record_frame(self.session.log, "out", frame if stored is message else protocol.encode(stored))
        with contextlib.suppress(tornado.websocket.WebSocketClosedError):
            self.write_message(frame, binary=True)

    def on_close(self) -> None:
        if self.session is not None:
            self.study.connection_lost(self.session, self)
            self.session = None


class PageModule(tornado.web.RequestHandler):
    """`/client/lifecycle.js`: the lifecycle and protocol names the page imports, generated once at start-up."""

    def initialize(self, source: str) -> None:
        self.source = source

    def get(self) -> None:
        self.set_header("Content-Type", "text/javascript; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(self.source)


class ParticipantPage(tornado.web.RequestHandler):
    """`/`: the participant's page, carrying the runtime so that Python starts loading before the socket opens."""

    def initialize(self, runtime: PageRuntime | None) -> None:
        self.runtime = runtime

    def get(self) -> None:
        self.set_header("Cache-Control", "no-cache")
        early = self.get_query_argument("preload", "") != AFTER_CONFIG
        self.render(str(CLIENT_DIR / "index.html"), runtime=self.runtime if early else None)


def make_app(config: Config) -> tornado.web.Application:
    """The whole server for one study; tests and `python -m server` both start it this way."""
    study = Study(config)
    snapshot = offered(config, study.pyodide_config, wheel_digests(study))
    precompressed = precompress(config, study, snapshot)
    snapshot_url = f"{SNAPSHOT_URL}{snapshot.name}" if snapshot else None
    routes: list[Any] = [
        (r"/", ParticipantPage, {"runtime": page_runtime(study.pyodide_config, snapshot_url)}),
        (r"/ws", ParticipantSocket, {"study": study}),
        (r"/client/lifecycle\.js", PageModule, {"source": page_module()}),
        (r"/client/(game_contract\.py)", tornado.web.StaticFileHandler, {"path": str(SERVER_DIR)}),
        (r"/client/(.*)", tornado.web.StaticFileHandler, {"path": str(CLIENT_DIR)}),
        (r"/vendor/msgpack/(.*)", tornado.web.StaticFileHandler, {"path": str(MSGPACK_DIR)}),
        (r"/simple/?", SimpleIndex, {"runtime": study.runtime}),
        (r"/simple/([^/]+)/?", SimpleIndex, {"runtime": study.runtime}),
        (r"/wheels/(.*)", EncodedFiles, {"path": str(config.wheelhouse), "precompressed": precompressed}),
        *admin_routes(study, config.admin_token),
    ]
    if snapshot is not None:
        routes.append(
            (rf"{SNAPSHOT_URL}(.*)", VersionedFiles, {"path": str(snapshot.parent), "precompressed": precompressed})
        )
    if study.runtime.pyodide_dir is not None:
        routes.append(
            (
                rf"/pyodide/{study.runtime.version}/(.*)",
                VersionedFiles,
                {"path": str(study.runtime.pyodide_dir), "precompressed": precompressed},
            )
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


def precompress(config: Config, study: Study, snapshot: Path | None) -> Precompressed | None:
    """The compressed copies of the runtime's files and wheels; the missing ones are made while the server runs."""
    if config.precompressed_dir is None:
        return None
    precompressed = Precompressed(config.precompressed_dir)
    precompressed.add(config.wheelhouse)
    if study.runtime.pyodide_dir is not None:
        precompressed.add(study.runtime.pyodide_dir)
    if snapshot is not None:
        precompressed.add(snapshot)
    precompressed.start()
    return precompressed


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log line, with any `token=` in the URL blanked out."""
    status = handler.get_status()
    log = access_log.info if status < 400 else access_log.warning if status < 500 else access_log.error
    uri = re.sub(r"([?&]token=)[^&]*", r"\1…", handler.request.uri or "")
    log(
        "%d %s %s (%s) %.2fms",
        status,
        handler.request.method,
        uri,
        handler.request.remote_ip,
        1000.0 * handler.request.request_time(),
    )
