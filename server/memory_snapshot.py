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

import asyncio
import base64
import dataclasses
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tornado.httpserver import HTTPServer

from .config import Config

log = logging.getLogger("preflight")

SNAPSHOT_URL = "/memory-snapshot/"
SERVER_DIR = Path(__file__).resolve().parent
CLIENT_DIR = SERVER_DIR.parent / "client" / "web"
CONTRACT = SERVER_DIR / "game_contract.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
MAKE_TIMEOUT_MS = 300_000


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
MAKE = """async ([origin, config]) => {
  const source = `
    import { PythonHost } from "${origin}/client/python.js";
    import { makeSnapshot } from "${origin}/client/snapshot.js";
    self.onmessage = async ({ data }) => {
      try {
        const host = new PythonHost(() => {});
        await host.load({ ...data, make_snapshot: true }, "${origin}", performance.timeOrigin + performance.now());
        const bytes = makeSnapshot(host.pyodide);
        let text = "";
        for (let i = 0; i < bytes.length; i += 32768) text += String.fromCharCode(...bytes.subarray(i, i + 32768));
        self.postMessage({ ok: true, snapshot: btoa(text) });
      } catch (err) {
        self.postMessage({ ok: false, error: String(err?.stack || err).slice(-2000) });
      }
    };`;
  const worker = new Worker(URL.createObjectURL(new Blob([source], { type: "text/javascript" })), { type: "module" });
  return await new Promise((resolve) => {
    worker.onmessage = ({ data }) => resolve(data);
    worker.onerror = (event) => resolve({ ok: false, error: event.message });
    worker.postMessage(config);
  });
}"""


class _Served:
    """The study's app on a free local port in a thread of its own, for the browser that makes the snapshot."""

    def __init__(self, config: Config) -> None:
        from .app import make_app  # app.py imports this module

        self.app = make_app(config)
        self.loop = asyncio.new_event_loop()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.origin = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._run, name="snapshot-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._listen())
        self.loop.run_forever()

    async def _listen(self) -> None:
        HTTPServer(self.app).add_sockets([self.sock])

    def __enter__(self) -> _Served:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.sock.close()


def make(config: Config, chromium: str = CHROMIUM) -> tuple[Path, bool]:
    """Load the study's runtime in headless Chromium as a participant's page would, snapshot it, and write the file;
    a file already made for this runtime is kept (its name says it was made from the same things). True if made."""
    from playwright.sync_api import sync_playwright  # a build-time tool: installed with the [test] extra

    with tempfile.TemporaryDirectory(prefix="preflight-snapshot-") as tmp:
        plain = dataclasses.replace(config, data_dir=Path(tmp), memory_snapshot=False, precompressed_dir=None)
        with _Served(plain) as served, sync_playwright() as playwright:
            study = served.app.settings["study"]
            name = snapshot_name(config, study.pyodide_config, wheel_digests(study))
            if name is None:
                raise RuntimeError("a memory snapshot needs the runtime served from --pyodide-dir")
            if (config.snapshot_dir / name).is_file():
                return config.snapshot_dir / name, False
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(served.origin + "/client/style.css")  # a page of the origin that loads nothing itself
                page.set_default_timeout(MAKE_TIMEOUT_MS)
                made = page.evaluate(MAKE, [served.origin, study.pyodide_config])
            finally:
                browser.close()
    if not made["ok"]:
        raise RuntimeError(f"the runtime could not be snapshotted: {made['error']}")
    config.snapshot_dir.mkdir(parents=True, exist_ok=True)
    target = config.snapshot_dir / name
    partial = target.with_name(f"{name}.{os.getpid()}.partial")
    partial.write_bytes(base64.b64decode(made["snapshot"]))
    os.replace(partial, target)
    return target, True


def wheel_digests(study: Any) -> dict[str, str]:
    """Every wheel the index serves, by file name, with its SHA-256: what micropip could have installed."""
    return {w.filename: w.sha256 for files in study.runtime.wheels.values() for w in files}


def make_command(config: Config) -> int:
    """`python -m server snapshot [flags]`: make the snapshot for the runtime those flags serve, and its copies."""
    started = time.monotonic()
    path, made = make(config)
    said = f"made in {time.monotonic() - started:.0f} s" if made else "already made for this runtime (delete to remake)"
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB): {said}", flush=True)
    if config.precompressed_dir is not None:
        from .precompress import Precompressed

        copies = Precompressed(config.precompressed_dir)
        copies.add(path)
        copies.index()
        copies.build()  # brotli at its best on ~30 MB: about two minutes, once
        print(f"compressed copies in {config.precompressed_dir} after {time.monotonic() - started:.0f} s", flush=True)
    print("serve it with: python -m server --memory-snapshot (and the same flags)")
    return 0
