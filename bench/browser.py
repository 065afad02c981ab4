"""What the preload buys a participant: time to a playable game in headless Chromium, with and without it.

Run: .venv/bin/python -m bench.browser [--runs 3]

The script starts `python -m server` (the built-in example) on a free port with a
temporary data dir and drives Debian's /usr/bin/chromium, a fresh browser context
(empty cache, new profile) for every run. Per run it measures:

* config -> ready: from the page handling `experiment_config` to the page handling
  the server's first `state` message with state == "ready" (screening passed and
  Python preloaded: the Start button is enabled).
* enter game -> first frame / first step: from the click on the Continue button that
  enters the game (the instructions scene) to `__preflight.firstFrameAt` (the game
  drew, so it can take keys) and `__preflight.firstStepAt` (the environment stepped
  in Python). The harness presses ArrowRight as soon as it sees the first frame;
  "first step" therefore includes the harness's own reaction time (polling each
  animation frame plus one CDP round trip, a few ms to a few tens of ms).
* config -> first step: the whole walk with no time spent reading, the harness clicking
  each button as soon as it is enabled; the preload can only hide the load behind
  the time a real participant spends on the start and instruction scenes.

Runs alternate between two modes:

* with preload: the page loads Pyodide while the participant reads the start scene;
  the harness waits for "ready" before clicking Start, as a participant must.
* without preload (the predecessor's behaviour, Python loaded at game time): the
  runtime's first import of pyodide.mjs is aborted (the page's preload link for it is
  let through), so the preload reports an error, the gate opens anyway, and the game
  scene loads Pyodide itself when it starts.

All timestamps are taken inside the page with performance.now(), not by polling from
Python: an init script turns `__preflight.config` and `__preflight.state` into setters
that note when app.js assigns them (i.e. when it handles the message), and a
capture-phase click listener notes when the #advance button is clicked.

Before the measured runs, one unmeasured walk-through (which also warms the server's
file cache) saves docs/loading.png, the start scene while the game's wheel request is
held back so the progress indicator shows loading, and docs/game.png after a few moves.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Page, Route, sync_playwright

from client.harness import CHROMIUM, ROOT, launch_chromium, served

DOCS = ROOT / "docs"
VIEWPORT = {"width": 1000, "height": 900}
LOAD_TIMEOUT_MS = 120_000  # a full Pyodide load on a slow, shared machine
STEP_TIMEOUT_MS = 10_000  # anything that does not load Python

# Runs before app.js: timestamps the page's own handling of messages and clicks into window.__bench.
INIT_SCRIPT = """
(() => {
  const bench = window.__bench = { configAt: null, stateAt: {}, clicks: [], sent: 0 };
  const noted = (obj, name, note) => {
    let value;
    Object.defineProperty(obj, name, { enumerable: true, configurable: true, get: () => value,
                                       set: (v) => { value = v; note(v); } });
  };
  let preflight;
  Object.defineProperty(window, "__preflight", { configurable: true, get: () => preflight, set: (obj) => {
    preflight = obj;
    noted(obj, "config", () => { bench.configAt ??= performance.now(); });
    noted(obj, "state", (s) => { bench.stateAt[`${s.state}:${s.scene_id}`] ??= performance.now(); });
  } });
  window.addEventListener("click", (event) => {
    if (event.target?.id === "advance") {
      bench.clicks.push({ t: performance.now(), scene_id: window.__preflight?.state?.scene_id ?? null });
    }
  }, true);
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) { bench.sent += 1; return send.call(this, data); };
})();
"""


@dataclass
class Run:
    mode: str  # "with preload" | "without preload"
    config_to_ready: float
    enter_to_frame: float
    enter_to_step: float
    config_to_step: float
    pyodide_loads: int
    preload_status: str


# -- the page --------------------------------------------------------------------------------


def wait_js(page: Page, expression: str, timeout: int = STEP_TIMEOUT_MS) -> Any:
    """Wait, checking every animation frame, until `expression` is truthy in the page; return its value."""
    return page.wait_for_function(expression, timeout=timeout, polling="raf").json_value()


def wait_state(page: Page, state: str, scene_id: str, timeout: int = STEP_TIMEOUT_MS) -> None:
    current = "window.__preflight?.state"
    wait_js(page, f"{current}?.state === {state!r} && {current}.scene_id === {scene_id!r}", timeout)


def open_page(context: BrowserContext, url: str) -> Page:
    context.add_init_script(INIT_SCRIPT)
    page = context.new_page()
    page.goto(url, timeout=STEP_TIMEOUT_MS)
    return page


def enter_game(page: Page) -> str:
    """From the start scene, once it lets the participant on: Start, then the Continue that enters the game.

    Returns the preloaded runtime's status when the start scene let the participant on.
    """
    wait_state(page, "ready", "start", LOAD_TIMEOUT_MS)
    status = page.evaluate("window.__preflight.runtime.status")
    page.click("#advance", timeout=STEP_TIMEOUT_MS)
    wait_state(page, "ready", "instructions")
    page.click("#advance", timeout=STEP_TIMEOUT_MS)
    wait_state(page, "in_game", "gridworld")
    return status


def press_and_wait_step(page: Page, key: str) -> None:
    """Press a key once the game listens, and wait until the page has sent the step's game_event."""
    wait_js(page, "window.__preflight.firstFrameAt !== null", LOAD_TIMEOUT_MS)
    sent = page.evaluate("window.__bench.sent")
    page.keyboard.press(key)
    wait_js(page, f"window.__bench.sent > {sent}")


def measure(browser: Browser, url: str, preload: bool) -> Run:
    context = browser.new_context(viewport=VIEWPORT)
    try:
        aborted: list[str] = []
        if not preload:

            def abort_first(route: Route) -> None:
                if aborted or route.request.resource_type != "script":  # not the page's preload link
                    route.continue_()
                else:
                    aborted.append(route.request.url)
                    route.abort()

            context.route(lambda u: "/pyodide/" in u and u.endswith("/pyodide.mjs"), abort_first)
        page = open_page(context, url)
        preload_status = enter_game(page)
        if preload_status != ("ready" if preload else "error"):
            raise RuntimeError(f"the preload ended {preload_status!r} in the {'with' if preload else 'without'} mode")
        press_and_wait_step(page, "ArrowRight")
        wait_js(page, "window.__preflight.firstStepAt !== null")
        t = page.evaluate("""() => {
            const b = window.__bench, p = window.__preflight;
            return { config: b.configAt, ready: b.stateAt["ready:start"],
                     enter: b.clicks.find((c) => c.scene_id === "instructions").t,
                     frame: p.firstFrameAt, step: p.firstStepAt, loads: p.runtime.loads };
        }""")
        if not preload and len(aborted) != 1:
            raise RuntimeError(f"expected one aborted pyodide.mjs request, got {aborted}")
        return Run(
            mode="with preload" if preload else "without preload",
            config_to_ready=(t["ready"] - t["config"]) / 1000,
            enter_to_frame=(t["frame"] - t["enter"]) / 1000,
            enter_to_step=(t["step"] - t["enter"]) / 1000,
            config_to_step=(t["step"] - t["config"]) / 1000,
            pyodide_loads=t["loads"],
            preload_status=preload_status,
        )
    finally:
        context.close()


def screenshots(browser: Browser, url: str) -> None:
    """docs/loading.png while the game's wheel is held back; docs/game.png after a few moves."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        held: list[Route] = []
        context.route("**/local-wheels/preflight_local_gridworld_env*", lambda route: held.append(route))
        page = open_page(context, url)
        wait_js(
            page,
            "document.getElementById('progress-text')?.textContent.startsWith('Installing packages')",
            LOAD_TIMEOUT_MS,
        )
        deadline = time.monotonic() + STEP_TIMEOUT_MS / 1000
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        if not held:
            raise RuntimeError("the game's wheel was never requested")
        page.wait_for_timeout(400)  # let the progress bar's width transition (0.3 s) finish
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "loading.png"), timeout=STEP_TIMEOUT_MS)
        for route in held:
            route.continue_()
        enter_game(page)
        for key in ("ArrowDown", "ArrowDown", "ArrowDown", "ArrowRight"):  # around the wall, short of the goal
            press_and_wait_step(page, key)
        page.screenshot(path=str(DOCS / "game.png"), timeout=STEP_TIMEOUT_MS)
    finally:
        context.close()


# -- the report ------------------------------------------------------------------------------


def machine_lines(browser: Browser) -> Iterator[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    chromium = subprocess.run(
        [CHROMIUM, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()  # the wrapper script also complains on stderr
    yield f"- nproc: {nproc} ({cpu})"
    yield f"- chromium: {chromium} (playwright reports {browser.version})"
    yield f"- python: {platform.python_version()} ({sys.executable})"


def table(runs: list[Run]) -> Iterator[str]:
    def row(label: str, values: list[float]) -> str:
        return f"| {label} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |"

    with_ = [r for r in runs if r.mode == "with preload"]
    without = [r for r in runs if r.mode == "without preload"]
    yield f"{len(with_)} runs per mode, seconds"
    yield ""
    yield "| metric | median | min | max |"
    yield "| --- | ---: | ---: | ---: |"
    yield row("config -> ready (preload; Start enabled)", [r.config_to_ready for r in with_])
    yield row("config -> ready (preload aborted)", [r.config_to_ready for r in without])
    yield row("enter game -> first frame, with preload", [r.enter_to_frame for r in with_])
    yield row("enter game -> first frame, without preload", [r.enter_to_frame for r in without])
    yield row("enter game -> first step, with preload", [r.enter_to_step for r in with_])
    yield row("enter game -> first step, without preload", [r.enter_to_step for r in without])
    yield row("config -> first step, with preload (no reading time)", [r.config_to_step for r in with_])
    yield row("config -> first step, without preload (no reading time)", [r.config_to_step for r in without])
    ratio = statistics.median(r.enter_to_step for r in with_) / statistics.median(r.enter_to_step for r in without)
    yield ""
    yield f"enter game -> first step, with / without preload (medians): {ratio:.4f}"


def runs_argument(doc: str) -> int:
    """The `--runs` flag every browser benchmark takes; a bad value ends the script with a usage error."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (default: %(default)s)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args.runs


@contextmanager
def served_browser() -> Iterator[tuple[str, Path, Browser]]:
    """`python -m server` on a temporary data dir and one headless Chromium, both stopped afterwards.

    Yields the participant URL, the data dir the server writes to, and the browser.
    """
    with tempfile.TemporaryDirectory(prefix="preflight-bench-") as tmp:
        data = Path(tmp) / "data"
        with served(data) as url, sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                yield url, data, browser
            finally:
                browser.close()


def main() -> int:
    runs_per_mode = runs_argument(__doc__)
    if not os.access(CHROMIUM, os.X_OK):
        print(f"python -m bench.browser: {CHROMIUM} is required (`make browser` installs it)", file=sys.stderr)
        return 2
    with served_browser() as (url, _, browser):
        screenshots(browser, url)
        runs: list[Run] = []
        for k in range(runs_per_mode):
            for preload in (True, False):
                run = measure(browser, url, preload)
                print(
                    f"run {k + 1} {run.mode}: config->ready {run.config_to_ready:.3f} s, "
                    f"enter->frame {run.enter_to_frame:.3f} s, enter->step {run.enter_to_step:.3f} s "
                    f"(preload {run.preload_status}, loadPyodide calls {run.pyodide_loads})",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(run)
        print("\n".join([*machine_lines(browser), "", *table(runs)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
