"""`python -m server snapshot`: make the memory snapshot `--memory-snapshot` offers, in headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from tornado.httpserver import HTTPServer

from .config import Config
from .memory_snapshot import snapshot_name, wheel_digests

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
MAKE_TIMEOUT_MS = 300_000

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

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.setblocking(False)
        port = self.sock.getsockname()[1]
        self.origin = f"http://127.0.0.1:{port}"
        # The package index builds its URLs from the address the app is told it listens at: this very port.
        self.app = make_app(dataclasses.replace(config, host="127.0.0.1", port=port))
        self.loop = asyncio.new_event_loop()
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
        # The same stdlib as the server will name (a snapshot holds zipimport's offsets into it), so the same cache.
        plain = dataclasses.replace(config, data_dir=Path(tmp), memory_snapshot=False)
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
