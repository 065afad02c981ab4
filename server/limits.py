"""Bounded resources: what one address, one session and the whole server may take, with the options Tornado needs.

Every bound is a `Config` field with a flag; the defaults are far above what a real study uses, so they only
ever meet a flood, a slowloris or a runaway page.
"""

from __future__ import annotations

import errno
import gc
import logging
import resource
import socket
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from tornado.ioloop import IOLoop

from .config import Config
from .protocol import Code, Refusal

log = logging.getLogger("preflight")

MAX_USER_AGENT = 512
"""Longer User-Agent headers are cut before they are stored (the screening facts' own bound)."""


def server_options(config: Config) -> dict[str, Any]:
    """`HTTPServer` options: headers and bodies have deadlines and sizes, so no slow or huge request pins memory."""
    return {
        "idle_connection_timeout": config.idle_timeout,  # Tornado also uses it as the deadline for request headers
        "body_timeout": config.idle_timeout,
        "max_body_size": config.max_body_bytes,  # refused from Content-Length, before the body is read
        "max_header_size": 64 * 1024,
    }


def raise_descriptor_limit(wanted: int = 65536) -> tuple[int, int]:
    """Raise the soft limit on open files toward the hard one: each participant holds a socket and a log file."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft, hard


COLLECT_EVERY = 50_000
"""Allocations between passes of the cyclic collector (Python's default: 700); see `settle_collector`."""


def settle_collector() -> None:
    """Tune Python's cyclic collector for a server whose sessions are freed by reference counting.

    What start-up built (the study, its compiled machine, the runtime's file tables, Tornado) lives as long as the
    server: frozen, it is no longer walked by every full pass. A participant's connection allocates hundreds of
    objects, nearly all freed by reference counting, so a pass every 700 allocations mostly walks live objects:
    at 50,000, a handshake costs ~15 % less server CPU (docs/benchmarks.md), and the cycles it still frees wait a
    little longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(COLLECT_EVERY, 20, 100)


OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""`accept()` errors that last until something is closed: retrying at once only spins the loop."""

ACCEPT_PAUSE = 0.5
"""Seconds the listening sockets rest after such an error before accepting is tried again."""

ACCEPT_QUIET = 2.0
"""Seconds without such an error before the condition counts as over (near the limit, accepts come and go)."""


class AcceptGuard:
    """Out of descriptors, `accept()` fails on every loop turn: log the condition once, rest, say when it is over.

    Tornado's own accept handler lets the error escape to asyncio, which logs a traceback per try (the issue saw
    144,408 in 40 s) while the ready listening socket spins the loop; here the listening socket stops being watched
    for `pause` seconds, the error is logged once per errno, and once `quiet` seconds pass without one, that is
    logged with the count of failed tries.
    """

    def __init__(self, pause: float = ACCEPT_PAUSE, quiet: float = ACCEPT_QUIET) -> None:
        self.pause = pause
        self.quiet = quiet
        self.failing: int | None = None  # errno of the condition now logged, None while accepting works
        self.refusals = 0  # failed accepts during the current condition
        self.last_failure = 0.0
        self.since = 0.0

    def failed(self, sock: socket.socket, exc: OSError) -> None:
        loop = IOLoop.current()
        self.refusals += 1
        self.last_failure = loop.time()
        if self.failing is None:
            self.since = self.last_failure
            loop.call_later(self.quiet, self.check_over)
        if exc.errno != self.failing:
            self.failing = exc.errno
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            log.error("cannot accept connections (%s: %s); pausing %g s between tries", name, exc.strerror, self.pause)
        loop.update_handler(sock, 0)
        loop.call_later(self.pause, self.resume, sock)

    def resume(self, sock: socket.socket) -> None:
        if sock.fileno() != -1:  # the server may have stopped (and closed it) meanwhile
            IOLoop.current().update_handler(sock, IOLoop.READ)

    def check_over(self) -> None:
        loop = IOLoop.current()
        left = self.last_failure + self.quiet - loop.time()
        if left > 0:
            loop.call_later(left, self.check_over)
            return
        log.warning(
            "accepting connections again (%d tries failed over %.1f s)", self.refusals, self.last_failure - self.since
        )
        self.failing, self.refusals = None, 0


class GuardedSocket(socket.socket):
    """A listening socket whose `accept()` reports resource errors to its guard and looks empty to Tornado."""

    guard: AcceptGuard

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno not in OUT_OF_RESOURCES:
                raise
            self.guard.failed(self, exc)
            raise BlockingIOError(errno.EAGAIN, "accepting paused") from exc  # Tornado's handler stops quietly


def guarded(sockets: Iterable[socket.socket], guard: AcceptGuard) -> list[socket.socket]:
    """The listening sockets from `tornado.netutil.bind_sockets`, each watched by `guard` (same descriptors)."""
    out: list[socket.socket] = []
    for sock in sockets:
        wrapped = GuardedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        wrapped.guard = guard
        out.append(wrapped)
    return out


class Limits:
    """Open connections and new sessions per address, live sessions, and research bytes per session."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.connections: Counter[str] = Counter()  # address -> open /ws connections
        self.window = 0  # the minute `started` counts new sessions for
        self.started: Counter[str] = Counter()
        self.stored: dict[str, int] = {}  # session id -> research bytes received

    def connect(self, address: str) -> bool:
        """Count a new connection from `address`; False when that address already holds its share."""
        if self.connections[address] >= self.config.max_connections_per_ip:
            return False
        self.connections[address] += 1
        return True

    def disconnect(self, address: str) -> None:
        self.connections[address] -= 1
        if self.connections[address] <= 0:
            del self.connections[address]

    def new_session(self, address: str, live: int) -> Refusal | None:
        """Whether a `hello` without a token may open a session now."""
        if live >= self.config.max_sessions:
            return Refusal(Code.SERVER_FULL, "the study is at capacity; please try again in a few minutes")
        minute = int(time.monotonic() // 60)
        if minute != self.window:  # a new minute: forget the last one's counts (and the addresses in them)
            self.window, self.started = minute, Counter()
        if self.started[address] >= self.config.sessions_per_ip_per_minute:
            return Refusal(Code.RATE_LIMITED, "too many new sessions from this address; wait a minute")
        self.started[address] += 1
        return None

    def store(self, session_id: str, size: int) -> bool:
        """Count `size` research bytes for a session; False (and nothing counted) when they would pass its quota."""
        total = self.stored.get(session_id, 0) + size
        if total > self.config.max_session_bytes:
            return False
        self.stored[session_id] = total
        return True

    def forget(self, session_id: str) -> None:
        self.stored.pop(session_id, None)
