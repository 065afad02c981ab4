"""What the participant's page needs to start loading Python before its WebSocket opens.

The runtime's version, URLs and packages are the same for every participant, so the page the server renders
carries them: preload links start the runtime's largest files while the page's own scripts load, and the page
starts its runtime at once, so the socket's handshake and `experiment_config` arrive while the bytes are already
flowing. The preload's reports still go to the server only once there is a session, and the server still gates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tornado.escape import json_encode

PRELOADS = ("pyodide.asm.wasm", "python_stdlib.zip")
"""The core's two large files, 5.3 of its 5.6 MB. Only these: over HTTP/1.1 a browser opens six connections to a host,
and each preload holds one for its whole download, so preloading the two small modules too kept the page's own
scripts (and the worker's) queued and delayed `experiment_config` by 0.4–0.8 s (bench/network.py, fast and typical);
the runtime fetches those itself once its worker starts."""
AFTER_CONFIG = "after-config"
"""`?preload=after-config`: a page without the runtime's config, which starts loading on `experiment_config` (the
path before, kept for comparison in bench/network.py)."""


@dataclass(frozen=True)
class PageRuntime:
    """The runtime as the rendered page carries it."""

    config_json: str  # the study's `pyodide_config`, safe inside a <script> element
    preloads: tuple[str, ...]  # URLs for <link rel="preload">


def page_runtime(pyodide_config: dict[str, Any], snapshot_url: str | None = None) -> PageRuntime | None:
    """The runtime for the page to start with (with its memory snapshot, if one is offered), or None without Python."""
    if not pyodide_config.get("needs_pyodide"):
        return None
    base = pyodide_config["pyodide_url"]
    preloads = [base + name for name in PRELOADS]
    if pyodide_config.get("stdlib_url"):  # the repacked stdlib the runtime will ask for (server/precompress.py)
        preloads[PRELOADS.index("python_stdlib.zip")] = pyodide_config["stdlib_url"]
    if snapshot_url:
        pyodide_config = {**pyodide_config, "snapshot_url": snapshot_url}
        preloads.insert(1, snapshot_url)
    return PageRuntime(json_encode(pyodide_config), tuple(preloads))
