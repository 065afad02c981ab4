"""What the runtime's worker buys the page: main-thread stalls and time to ready, worker vs main.

Run: .venv/bin/python -m bench.worker [--runs 3]

The script starts `python -m server` (the built-in example) on a free port with a
temporary data dir and drives Debian's /usr/bin/chromium, a fresh browser context
(empty cache, new profile) for every run. Runs alternate between two modes, side by side:

* worker: the page as served, Python in its dedicated worker;
* main: the same page with `?runtime=main`, Python on the page's main thread (the
  behaviour before the worker, and the last-resort fallback).

Per run, all taken inside the page (an init script that runs before app.js):

* longest main-thread stall from page load to `ready`: the longest gap between ticks of
  a 10 ms `setInterval` heartbeat (a gap of 10 ms means no stall), and the longest
  Long Tasks API entry (tasks over 50 ms; none means 0) that started before `ready`.
  "ready" is the page handling the server's first `state` with state == "ready"
  (screening passed and the preload settled: Start is enabled).
* time to ready: from navigation start (performance.now() == 0) to `ready`, and from the
  page handling `experiment_config` (when the preload starts) to `ready`.
* the game: the harness walks into the game and, from its first frame, dispatches one
  arrow-key `keydown` every 100 ms inside the page, circling the top-left square so the
  game runs its full `max_steps`; the heartbeat keeps running, so the longest stall during
  the game is reported too. (The game loop's own figures — tick rate, frame time, work on
  the main thread per frame — are `python -m bench.game`'s.)

One unmeasured run per mode comes first (the server's and the browser's first-use
costs), then the modes alternate, each taking the first turn every other run.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Browser

from bench.browser import (
    LOAD_TIMEOUT_MS,
    STEP_TIMEOUT_MS,
    VIEWPORT,
    machine_lines,
    runs_argument,
    served_browser,
    wait_js,
    wait_state,
)
from client.harness import CHROMIUM, records_of
from server.examples.gridworld.study import experiment
from server.experiment import GymScene

[GAME] = [s for s in experiment.leaves() if isinstance(s, GymScene)]
MODES = ("worker", "main")
HEARTBEAT_MS = 10

# Runs before app.js: a heartbeat, the Long Tasks API, and the moments the page handles config and ready.
INIT_SCRIPT = """
(() => {
  const bench = window.__bench = { configAt: null, readyAt: null, maxGap: 0, gameMaxGap: 0, longTasks: [] };
  let last = performance.now();
  setInterval(() => {
    const t = performance.now(), gap = t - last;
    last = t;
    if (bench.readyAt === null) bench.maxGap = Math.max(bench.maxGap, gap);
    else if (window.__preflight?.firstFrameAt != null) bench.gameMaxGap = Math.max(bench.gameMaxGap, gap);
  }, HEARTBEAT_MS);
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) bench.longTasks.push([e.startTime, e.duration]);
  }).observe({ type: "longtask", buffered: true });
  let preflight;
  Object.defineProperty(window, "__preflight", { configurable: true, get: () => preflight, set: (obj) => {
    preflight = obj;
    let config, state;
    Object.defineProperty(obj, "config", { enumerable: true, get: () => config,
                                           set: (v) => { config = v; bench.configAt ??= performance.now(); } });
    Object.defineProperty(obj, "state", { enumerable: true, get: () => state, set: (v) => {
      state = v;
      if (v.state === "ready" && v.scene_id === "start") bench.readyAt ??= performance.now();
    } });
  } });
})();
""".replace("HEARTBEAT_MS", str(HEARTBEAT_MS))

# Presses arrow keys at the game's frame rate, circling (0,0) (1,0) (1,1) (0,1): never the goal.
DRIVE = """([fps, presses]) => new Promise((resolve) => {
  const keys = ["ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp"];
  let k = 0;
  const timer = setInterval(() => {
    window.dispatchEvent(new KeyboardEvent("keydown", { key: keys[k % 4], bubbles: true, cancelable: true }));
    if (++k >= presses) { clearInterval(timer); resolve(k); }
  }, 1000 / fps);
})"""


@dataclass
class Run:
    mode: str
    stall_ms: float  # longest heartbeat gap, page load -> ready
    long_task_ms: float  # longest long task that started before ready (0: none)
    nav_to_ready_s: float
    config_to_ready_s: float
    game_stall_ms: float  # longest heartbeat gap while the game ran
    stages_ms: dict[str, int]  # each preload stage's elapsed_ms as the page reported it
    where: str
    loads: int


def measure(browser: Browser, url: str, data: Path, mode: str, k: int) -> Run:
    participant = f"bench-{mode}-{k}"
    context = browser.new_context(viewport=VIEWPORT)
    try:
        context.add_init_script(INIT_SCRIPT)
        page = context.new_page()
        query = f"?PROLIFIC_PID={participant}" + ("&runtime=main" if mode == "main" else "")
        page.goto(url + query, timeout=STEP_TIMEOUT_MS)
        wait_state(page, "ready", "start", LOAD_TIMEOUT_MS)
        before = page.evaluate("""() => {
            const b = window.__bench, r = window.__preflight.runtime;
            const tasks = b.longTasks.filter(([start]) => start < b.readyAt).map(([, d]) => d);
            return { gap: b.maxGap, task: Math.max(0, ...tasks), ready: b.readyAt, config: b.configAt,
                     status: r.status, where: r.where, loads: r.loads };
        }""")
        if before["status"] != "ready" or before["where"] != mode:
            raise RuntimeError(f"{mode}: the runtime is {before['status']!r} on {before['where']!r}")
        page.click("#advance", timeout=STEP_TIMEOUT_MS)
        wait_state(page, "ready", "instructions")
        page.click("#advance", timeout=STEP_TIMEOUT_MS)
        wait_state(page, "in_game", GAME.scene_id)
        wait_js(page, "window.__preflight.firstFrameAt !== null")
        page.evaluate(DRIVE, [10, GAME.max_steps])
        wait_state(page, "ready", GAME.scene_id)
        game_gap = page.evaluate("window.__bench.gameMaxGap")
    finally:
        context.close()
    found = records_of(data, participant)
    steps = [s for r in found if r["kind"] == "steps" for s in r["steps"]]
    if len(steps) != GAME.max_steps:
        raise RuntimeError(f"{mode}: {len(steps)} steps recorded, expected {GAME.max_steps}")
    stages = {r.get("stage", r["status"]): r["elapsed_ms"] for r in found if r["kind"] == "preload"}
    return Run(
        mode,
        before["gap"],
        before["task"],
        before["ready"] / 1000,
        (before["ready"] - before["config"]) / 1000,
        game_gap,
        stages,
        before["where"],
        before["loads"],
    )


def table(runs: list[Run]) -> Iterator[str]:
    by = {mode: [r for r in runs if r.mode == mode] for mode in MODES}

    def med(mode: str, field: str) -> float:
        return statistics.median(getattr(r, field) for r in by[mode])

    def spread(mode: str, field: str, fmt: str) -> str:
        values = [getattr(r, field) for r in by[mode]]
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"

    yield f"{len(by['worker'])} runs per mode; median (min–max)"
    yield ""
    yield "| metric | worker | main thread | worker / main |"
    yield "| --- | ---: | ---: | ---: |"
    for label, field, fmt, unit in (
        ("longest main-thread stall, load -> ready (10 ms heartbeat gap)", "stall_ms", ".0f", "ms"),
        ("longest long task before ready (Long Tasks API)", "long_task_ms", ".0f", "ms"),
        ("time to ready: navigation -> ready", "nav_to_ready_s", ".3f", "s"),
        ("time to ready: experiment_config -> ready", "config_to_ready_s", ".3f", "s"),
        ("longest main-thread stall while playing (heartbeat gap)", "game_stall_ms", ".0f", "ms"),
    ):
        ratio = med("worker", field) / med("main", field) if med("main", field) else float("nan")
        yield (f"| {label}, {unit} | {spread('worker', field, fmt)} | {spread('main', field, fmt)} | {ratio:.3f} |")
    for stage in ("micropip", "packages", "preparing", "ready"):
        w, m = (statistics.median(r.stages_ms[stage] for r in by[mode]) for mode in MODES)
        yield f"| preload reached `{stage}` (elapsed_ms reported), ms | {w:.0f} | {m:.0f} | {w / m:.3f} |"


def main() -> int:
    runs_per_mode = runs_argument(__doc__)
    if not os.access(CHROMIUM, os.X_OK):
        print(f"python -m bench.worker: {CHROMIUM} is required (`make browser` installs it)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    with served_browser() as (url, data, browser):
        for mode in MODES:  # warm the server's and the browser's first-use paths, unmeasured
            measure(browser, url, data, mode, -1)
        runs: list[Run] = []
        for k in range(runs_per_mode):
            for mode in MODES if k % 2 == 0 else MODES[::-1]:  # neither mode always goes first
                run = measure(browser, url, data, mode, k)
                print(
                    f"run {k + 1} {mode}: stall {run.stall_ms:.0f} ms, long task {run.long_task_ms:.0f} ms, "
                    f"ready {run.nav_to_ready_s:.3f} s (loadPyodide calls {run.loads}, "
                    f"load average {os.getloadavg()[0]:.2f})",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(run)
        print(
            "\n".join(
                [
                    *machine_lines(browser),
                    f"- load average (1 min) before / after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}",
                    "",
                    *table(runs),
                ]
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
