"""Everything the server is told at start-up, in one frozen value built by `python -m server` from its flags."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .experiment import Experiment
from .runtime import DEFAULT_PYODIDE_DIR, DEFAULT_WHEELHOUSE
from .session import Timeouts


def new_admin_token() -> str:
    """A fresh random token: there is no default password."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Config:
    """The study's settings; tests change fields with `dataclasses.replace`."""

    experiment: Experiment
    data_dir: Path
    experiment_file: Path | None = None  # its folder holds the researcher's own game modules (None: none)
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
    wheelhouse: Path | None = DEFAULT_WHEELHOUSE  # None: the study's cache (.preflight/wheelhouse)
    precompressed_dir: Path | None = None  # compressed copies of the runtime's files; None sends them as they are
    hello_timeout: float = 30.0  # seconds a new connection has to say hello before it is closed (4002)
    idle_timeout: float = 60.0  # seconds an HTTP connection may idle or take to send its headers or body
    max_body_bytes: int = 1024 * 1024  # larger request bodies are refused from Content-Length, never read
    max_connections_per_ip: int = 1000  # open /ws connections from one address (a campus NAT stays far below)
    sessions_per_ip_per_minute: int = 1000  # new sessions one address may open a minute (load tests stay below)
    max_sessions: int = 20_000  # live and parked sessions; beyond, a new hello is refused as server_full
    max_session_bytes: int = 256 * 1024 * 1024  # research data one session may send; beyond, quota_exceeded
    public_origin: str = ""  # e.g. "https://study.example.org": /simple's URLs use it, not the Host header
    lock_ids: tuple[str, ...] = ("completed",)  # outcomes after which a participant id may not start again
    micropip: bool = False  # install the study's wheels with micropip in the page (the load before #17), not directly
    memory_snapshot: bool = False  # offer the runtime's memory snapshot from snapshot_dir, when one was made for it
    snapshot_dir: Path = Path(__file__).resolve().parent.parent / "build" / "memory-snapshots"
    admin_token: str = field(default_factory=new_admin_token, repr=False)  # never a default password
