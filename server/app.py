"""The Tornado application: thin handlers over one shared lifecycle machine; `make_app` wires them to a study."""

from __future__ import annotations

import contextlib
import logging
import struct
import time
import urllib.parse
from pathlib import Path
from typing import Any

import tornado.web
import tornado.websocket
from tornado.iostream import StreamClosedError
from tornado.log import access_log

from statemachine import INITIAL, Fired, top_state

from . import delivery, protocol
from .admin import admin_routes
from .assets import AssetFiles, collect_assets
from .config import Config
from .early_start import AFTER_CONFIG, PageRuntime, page_runtime
from .limits import MAX_USER_AGENT
from .memory_snapshot import SNAPSHOT_URL, offered, wheel_digests
from .packages import LOCAL_URL
from .page_module import page_module
from .partners import ONNX_DIR, ModelFiles
from .precompress import STDLIB_URL, EncodedFiles, Precompressed
from .protocol import Close, Code, Refusal
from .runtime import MSGPACK_DIR, IndexOrigin, SimpleIndex, VersionedFiles
from .session import Session
from .static import StaticFiles
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


RTT_WAIT_S = 5.0
"""How long after the ping sent at open a `screening` that arrived before its pong waits for it: a client that sends
its facts right behind `hello` is judged with its round trip, not as `rtt_unmeasured`."""

MAX_HELD = 64
"""Messages a connection may send while its `screening` waits for the pong: a page sends a few, a flood is closed."""

_SHORT_HEADS = tuple(bytes((0x82, size)) for size in range(126))
"""The two-byte head of each binary frame shorter than 126 bytes (a `received`, a `state`), made once."""


def binary_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented binary WebSocket frame (RFC 6455 5.2), as a server sends it without compression."""
    size = len(payload)
    if size < 126:
        return _SHORT_HEADS[size] + payload
    if size <= 0xFFFF:
        return struct.pack("!BBH", 0x82, 126, size) + payload
    return struct.pack("!BBQ", 0x82, 127, size) + payload


class ParticipantSocket(tornado.websocket.WebSocketHandler):
    """`/ws`: decode, validate, trigger; everything else is the session's and the machine's.

    What one incoming message makes the server say leaves in one write to the socket: each message
    is still its own WebSocket frame, but the frames of one event share a system call.
    """

    # Kept in slots, not in the instance's dict: Tornado's own attributes fill a dict that shares its keys with
    # every other handler's up to 30; eight more made each connection's a table of its own (~1.3 KB more).
    __slots__ = (
        "ack_due",
        "address",
        "corked",
        "held",
        "held_timer",
        "hello_timer",
        "limit",
        "pinged_at",
        "refusals",
        "rtt_ms",
        "session",
        "study",
    )

    def initialize(self, study: Study) -> None:
        self.study = study
        self.session: Session | None = None
        self.refusals = 0
        self.rtt_ms: float | None = None
        self.limit = RateLimit(study.config.messages_per_second)
        self.address: str | None = None  # counted against the per-address limit while open
        self.hello_timer: object | None = None
        self.corked: list[bytes] | None = None  # frames held while a message is handled, written together after
        self.ack_due = False  # a `received` is on its way, once the loop is done with the frames it read
        self.pinged_at: float | None = None  # when the ping sent at open left, while it is unanswered
        self.held: list[bytes | str] | None = None  # frames from a `screening` on, while it waits for that pong
        self.held_timer: object | None = None

    @property
    def user_agent(self) -> str:
        return self.request.headers.get("User-Agent", "")[:MAX_USER_AGENT]

    def check_origin(self, origin: str) -> bool:
        return origin in self.study.config.allowed_origins or super().check_origin(origin)

    def open(self) -> None:
        address = self.request.remote_ip or ""
        if not self.study.limits.connect(address):
            self.close(Close.TOO_MANY, "too many connections from this address")
            return
        self.address = address
        self.set_nodelay(True)  # each event's frames leave in one write: nothing to gain from waiting for more
        self.hello_timer = self.study.clock.call_later(self.study.config.hello_timeout, self.no_hello)
        # Now, not with the replies to `hello`: a page's pong is then back before its facts, which are judged with
        # the round trip; a client that sends them sooner has them wait for it (`hold_for_pong`).
        self.pinged_at = time.monotonic()
        self.ping(struct.pack("!d", self.pinged_at))

    def no_hello(self) -> None:
        """A connection that never says hello holds a socket for nothing: close it."""
        self.hello_timer = None
        if self.session is None:
            self.close(Close.NO_HELLO, f"no accepted hello within {self.study.config.hello_timeout:g} s")

    def on_ping(self, data: bytes) -> None:
        """A client's pings cost like messages: a ping flood meets the same rate limit and the same close."""
        if not self.limit.take():
            self.refusals += 1
            if self.refusals >= self.study.config.max_refusals:
                self.close(Close.POLICY, "too many pings")

    def on_pong(self, data: bytes) -> None:
        if len(data) == 8:
            self.rtt_ms = (time.monotonic() - struct.unpack("!d", data)[0]) * 1000.0
            if self.session is not None:
                self.session.rtt_ms = self.rtt_ms
            if self.pinged_at is not None:
                self.release_held()

    def hold_for_pong(self, frame: bytes | str) -> None:
        """Keep this frame and every later one until the pong is back (or `RTT_WAIT_S` has passed since the ping),
        then handle them in the order they came."""
        if self.held is None:
            assert self.pinged_at is not None
            self.held = []
            wait = max(0.0, self.pinged_at + RTT_WAIT_S - time.monotonic())
            self.held_timer = self.study.clock.call_later(wait, self.release_held)
        if len(self.held) >= MAX_HELD:
            return self.close(Close.POLICY, f"over {MAX_HELD} messages before the round trip was measured")
        self.held.append(frame)

    def release_held(self) -> None:
        """The round trip is measured, or will not be: nothing waits for it from now on."""
        self.pinged_at = None
        if self.held_timer is not None:
            self.study.clock.remove_timeout(self.held_timer)
            self.held_timer = None
        held, self.held = self.held, None
        for frame in held or ():
            self.on_message(frame)

    def on_message(self, frame: bytes | str) -> None:
        if self.held is not None:
            return self.hold_for_pong(frame)
        self.corked = []
        due = self.study.store.pool.hold()  # written below, or before the first frame leaves
        try:
            self.handle(frame)
        finally:
            self.uncork()
            self.study.store.pool.unhold(due)

    def handle(self, frame: bytes | str) -> None:
        if not self.limit.take():
            return self.refuse(Refusal(Code.RATE_LIMITED, "too many messages; slow down"))
        if len(frame) > self.study.config.max_message_bytes:
            return self.refuse(
                Refusal(Code.TOO_LARGE, f"frames may be at most {self.study.config.max_message_bytes} bytes")
            )
        message = protocol.decode(frame)
        if (
            self.pinged_at is not None
            and self.session is not None
            and not isinstance(message, Refusal)
            and message["type"] == "screening"
        ):
            return self.hold_for_pong(frame)
        if (
            self.session is not None
            and not isinstance(message, Refusal)
            and message["type"] in protocol.RESEARCH_TYPES
            and not self.within_quota(message, len(frame))
        ):
            return None
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
        numbered = delivery.numbered(message)
        if numbered and not delivery.is_new(self.session, message):
            return self.acknowledge()  # resent after a reconnect, and already stored: say so again
        refusal = self.session.check(message)
        if refusal is not None:
            return self.refuse(refusal)
        fired = self.session.fire(message["type"], message)
        if numbered:  # no snapshot for it: a restart reads the highest `n` (and the game's steps) from the log
            self.acknowledge()
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
            self.acknowledge()
        else:
            refusal = self.study.limits.new_session(self.request.remote_ip or "", len(self.study.sessions))
            refusal = refusal or self.study.admit(message)
            if refusal is not None:
                self.refuse(refusal)
                if refusal.code is Code.STORAGE_UNAVAILABLE:
                    self.close(Close.UNAVAILABLE, "participant data cannot be written now")
                return
            self.session = self.study.open(self)
            self.record_in(frame, message)
            self.session.fire("hello", message)
            self.study.admitted(self.session)
        self.cancel_hello_timer()  # said: an idle participant holds no timer of the connection's
        self.refusals = 0

    def within_quota(self, message: dict[str, Any], size: int) -> bool:
        """Count research bytes against the session's quota; past it the message is refused with a trace (a
        `refused` record; a numbered one is confirmed, so the page stops resending what will never be stored)."""
        assert self.session is not None
        if self.study.limits.store(self.session.session_id, size):
            return True
        n = message.get("n")
        if delivery.numbered(message) and not delivery.is_new(self.session, message):
            self.acknowledge()
            return False
        self.session.record("refused", code=Code.QUOTA_EXCEEDED.value, type=message["type"], n=n, bytes=size)
        if n is not None:
            self.session.save(self.session)
            self.acknowledge()
        quota = self.study.config.max_session_bytes
        self.refuse(Refusal(Code.QUOTA_EXCEEDED, f"this session has sent its {quota} bytes of research data"))
        return False

    def acknowledge(self) -> None:
        """Tell the page up to which `n` its research data is stored, so it may forget it (not logged: derived).

        `received` is cumulative: the numbered messages of one read (a burst the page sends after a stall, or its
        batches as they come) are confirmed once, after the last of them is stored, in one write instead of many."""
        if self.session is not None and not self.ack_due:
            self.ack_due = True
            self.study.soon(self.acknowledged)

    def acknowledged(self) -> None:
        self.ack_due = False
        if self.session is not None:
            self.write_frame(protocol.encode(protocol.received(self.session.received_n)))

    def record_in(self, frame: bytes | str, message: dict[str, Any] | Refusal) -> None:
        assert self.session is not None
        if isinstance(message, Refusal):
            return record_frame(self.session.log, "in", frame, False)
        stored = protocol.redacted(message)
        record_frame(self.session.log, "in", frame if stored is message else protocol.encode(stored), True, message)

    def refuse(self, refusal: Refusal) -> None:
        state = top_state(self.session.state)[0] if self.session is not None else INITIAL
        self.send(protocol.error(refusal, state))
        if refusal.code is Code.FRAME_CLOSED:
            return  # a page behind its match (a stall, a burst of frames) is late, not abusive: never closed for it
        self.refusals += 1
        if self.refusals >= self.study.config.max_refusals:
            self.close(Close.POLICY, f"{self.refusals} refused messages in a row")

    def send(self, message: dict[str, Any]) -> None:
        frame = protocol.encode(message)
        if self.session is not None:
            stored = protocol.redacted(message)
            record_frame(self.session.log, "out", frame if stored is message else protocol.encode(stored))
        self.write_frame(frame)

    def write_frame(self, payload: bytes) -> None:
        """Send one message, or hold it for `uncork` while the message that caused it is being handled."""
        if self.corked is not None:
            self.corked.append(binary_frame(payload))
        else:
            self.write_frames([binary_frame(payload)])

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """What was said before the close goes out before it, and what was recorded is on disk before either."""
        self.uncork()
        self.study.store.flush()
        super().close(code, reason)

    def uncork(self) -> None:
        frames, self.corked = self.corked, None
        if frames:
            self.write_frames(frames)

    def write_frames(self, frames: list[bytes]) -> None:
        """Frames straight to the stream: no compression is negotiated (`get_compression_options` is None), so
        these are the bytes `write_message` would send, in one system call and without a task per frame."""
        self.study.store.flush()  # what these frames and the event that made them record is on disk first
        connection = self.ws_connection
        if connection is None or connection.is_closing() or connection.stream is None:
            return
        with contextlib.suppress(StreamClosedError):
            connection.stream.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def on_close(self) -> None:
        due = self.study.store.pool.hold()
        try:
            self.closed()
        finally:
            self.study.store.pool.unhold(due)

    def cancel_hello_timer(self) -> None:
        if self.hello_timer is not None:
            self.study.clock.remove_timeout(self.hello_timer)
            self.hello_timer = None

    def closed(self) -> None:
        if self.held is not None:  # what the participant sent is handled (and recorded) before the session parks
            self.release_held()
        self.cancel_hello_timer()
        if self.address is not None:
            self.study.limits.disconnect(self.address)
            self.address = None
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
    assets = collect_assets(config.experiment, config.experiment_file)
    snapshot = offered(config, study.pyodide_config, wheel_digests(study))
    precompressed = precompress(config, study, snapshot)
    snapshot_url = f"{SNAPSHOT_URL}{snapshot.name}" if snapshot else None
    index = {"wheels": study.runtime.wheels, "origin": IndexOrigin(config.public_origin, config.host, config.port)}
    routes: list[Any] = [
        (r"/", ParticipantPage, {"runtime": page_runtime(study.pyodide_config, snapshot_url)}),
        (r"/assets/([^/]+)/([^/]+)", AssetFiles, {"assets": assets}),
        (r"/ws", ParticipantSocket, {"study": study}),
        (r"/client/lifecycle\.js", PageModule, {"source": page_module()}),
        (r"/client/(game_contract\.py)", StaticFiles, {"path": str(SERVER_DIR)}),
        (r"/client/(.*)", StaticFiles, {"path": str(CLIENT_DIR)}),
        (r"/vendor/msgpack/(.*)", StaticFiles, {"path": str(MSGPACK_DIR)}),
        (r"/vendor/onnxruntime/(.*)", StaticFiles, {"path": str(ONNX_DIR)}),
        (r"/models/([0-9a-f]{16})/([^/]+)", ModelFiles, {"models": study.models}),
        (r"/simple/?", SimpleIndex, index),
        (r"/simple/([^/]+)/?", SimpleIndex, index),
        (r"/wheels/(.*)", EncodedFiles, {"path": str(study.runtime.wheelhouse), "precompressed": precompressed}),
        *admin_routes(study, config.admin_token),
    ]
    if study.packages.cache is not None:  # the study's own modules, named after their content's hash
        routes.append((rf"{LOCAL_URL}(.*)", VersionedFiles, {"path": str(study.packages.cache)}))
    if snapshot is not None:
        routes.append(
            (rf"{SNAPSHOT_URL}(.*)", VersionedFiles, {"path": str(snapshot.parent), "precompressed": precompressed})
        )
    if study.stdlib is not None:
        routes.append(
            (
                rf"{STDLIB_URL}(.*)",
                VersionedFiles,
                {"path": str(study.stdlib.parent.parent), "precompressed": precompressed},
            )
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
    precompressed.add(study.runtime.wheelhouse)
    if study.runtime.pyodide_dir is not None:
        precompressed.add(study.runtime.pyodide_dir)
    if snapshot is not None:
        precompressed.add(snapshot)
    if study.stdlib is not None:
        precompressed.add(study.stdlib)
    precompressed.start()
    return precompressed


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log line, with the value of any parameter that decodes to `token` blanked out.

    A WebSocket upgrade (101, one per participant connection, whose session's own file records it) is logged at
    DEBUG, not INFO: at INFO the line cost a few per cent of the server's CPU per participant."""
    status = handler.get_status()
    if status == 101:
        if not access_log.isEnabledFor(logging.DEBUG):
            return
        log = access_log.debug
    else:
        log = access_log.info if status < 400 else access_log.warning if status < 500 else access_log.error
    log(
        "%d %s %s (%s) %.2fms",
        status,
        handler.request.method,
        loggable_uri(handler.request.path, handler.request.query),
        handler.request.remote_ip,
        1000.0 * handler.request.request_time(),
    )


def loggable_uri(path: str, query: str) -> str:
    """The request's path and query, decoded as the server reads them, so `?%74oken=` is blanked like `?token=`."""
    if not query:
        return path
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    shown = [(k, "…" if k.strip().lower() == "token" else v) for k, v in pairs]
    return path + "?" + urllib.parse.urlencode(shown)
