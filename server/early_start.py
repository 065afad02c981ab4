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

CORE_FILES = ("pyodide.asm.wasm", "python_stdlib.zip", "pyodide.asm.mjs", "pyodide.mjs")
"""What `loadPyodide` fetches before it can run anything, largest first (links are fetched in order)."""
AFTER_CONFIG = "after-config"
"""`?preload=after-config`: a page without the runtime's config, which starts loading on `experiment_config` (the
path before, kept for comparison in bench/network.py)."""


@dataclass(frozen=True)
class PageRuntime:
    """The runtime as the rendered page carries it."""

    config_json: str  # the study's `pyodide_config`, safe inside a <script> element
    preloads: tuple[str, ...]  # URLs for <link rel="preload">


def page_runtime(pyodide_config: dict[str, Any]) -> PageRuntime | None:
    """The runtime for the page to start with, or None when no scene needs Python."""
    if not pyodide_config.get("needs_pyodide"):
        return None
    base = pyodide_config["pyodide_url"]
    return PageRuntime(json_encode(pyodide_config), tuple(base + name for name in CORE_FILES))
