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
    precompressed_dir: Path | None = None  # compressed copies of the runtime's files; None sends them as they are
    memory_snapshot: bool = False  # offer the runtime's memory snapshot from snapshot_dir, when one was made for it
    snapshot_dir: Path = Path(__file__).resolve().parent.parent / "build" / "memory-snapshots"
    admin_token: str = field(default_factory=new_admin_token, repr=False)  # never a default password
