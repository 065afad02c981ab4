"""Bounded resources: what one address, one session and the whole server may take, with the options Tornado needs.

Every bound is a `Config` field with a flag; the defaults are far above what a real study uses, so they only
ever meet a flood, a slowloris or a runaway page.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import Counter
from typing import Any

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
