"""A Pyodide memory snapshot of the study's runtime: made once in headless Chromium, offered with --memory-snapshot.

Restoring one replaces Python's start-up, micropip and the packages' installs and imports (about 2 s of CPU on a
2-core machine, far more when it is busy) with one more download (4.9 MB brotli for the example); bench/snapshot.py
measured it ahead on the typical network, behind on the slow one. It rests on Pyodide's underscore options
`_makeSnapshot`/`_loadSnapshot`, so it is opt-in, the page falls back to a plain load whenever a restore fails, and
the file is named by a digest of everything it was made from: Pyodide, the page's runtime config (lock, packages,
index), the wheels, the game contract and the page's load code. Any change needs a new one
(`python -m server snapshot [the server's flags]`); a server whose runtime has none offers none.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from .config import Config

log = logging.getLogger("preflight")

SNAPSHOT_URL = "/memory-snapshot/"
SERVER_DIR = Path(__file__).resolve().parent
CLIENT_DIR = SERVER_DIR.parent / "client" / "web"
CONTRACT = SERVER_DIR / "game_contract.py"


def snapshot_name(config: Config, pyodide_config: dict[str, Any], wheels: dict[str, str]) -> str | None:
    """The file name of the snapshot for this runtime, or None for a distribution served from elsewhere."""
    if config.pyodide_url or not config.pyodide_dir:
        return None
    digest = hashlib.sha256()
    parts = [
        *(config.pyodide_dir / name for name in ("pyodide.asm.wasm", "pyodide.asm.mjs", "python_stdlib.zip")),
        CLIENT_DIR / "python.js",
        CLIENT_DIR / "snapshot.js",
        CONTRACT,
    ]
    for path in parts:
        digest.update(
            path.name.encode() + b"\0" + (hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"")
        )
    digest.update(json.dumps([pyodide_config, wheels], sort_keys=True).encode())
    return f"{digest.hexdigest()[:32]}.bin"


def offered(config: Config, pyodide_config: dict[str, Any], wheels: dict[str, str]) -> Path | None:
    """The snapshot file to offer, when --memory-snapshot is on and one was made for this very runtime."""
    if not config.memory_snapshot or not pyodide_config.get("needs_pyodide"):
        return None
    name = snapshot_name(config, pyodide_config, wheels)
    if name is None:
        log.warning("--memory-snapshot needs the runtime served from --pyodide-dir; no snapshot is offered")
        return None
    path = config.snapshot_dir / name
    if not path.is_file():
        log.warning(
            "no memory snapshot for this runtime in %s (make it with `python -m server snapshot` and the same "
            "flags); participants load Python without one",
            config.snapshot_dir,
        )
        return None
    return path


# In a page of the origin: a module worker runs python.js's own load with `make_snapshot`, then snapshot.js packs it.
def wheel_digests(study: Any) -> dict[str, str]:
    """Every wheel the index serves, by file name, with its SHA-256: what micropip could have installed."""
    return {w.filename: w.sha256 for files in study.runtime.wheels.values() for w in files}
