"""Participants held in chosen states: one table of the messages that lead to each, for every test that needs one."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from pathlib import Path
from typing import Any

from client.participant import DESKTOP_CHROMIUM, ProtocolClient
from statemachine import INITIAL, SEPARATOR

PYODIDE = Path(__file__).resolve().parent.parent / "node_modules" / "pyodide"

HELLO = {"type": "hello"}
SMALL_SCREEN = {"type": "screening", "facts": {**DESKTOP_CHROMIUM, "screen_width": 320, "screen_height": 240}}
SCREENING = {"type": "screening", "facts": DESKTOP_CHROMIUM}
LOADING = {"type": "preload", "status": "loading", "stage": "runtime", "elapsed_ms": 5}
READY = {"type": "preload", "status": "ready", "elapsed_ms": 9}
FAILED = {"type": "preload", "status": "error", "error": "simulated", "elapsed_ms": 9}
ADVANCE = {"type": "advance"}
GAME_OVER = {"type": "game_over", "score": 1}

SITUATIONS: dict[str, list[dict]] = {
    "connected": [],
    "preflight/checking+idle": [HELLO],
    "preflight/passed+idle": [HELLO, SCREENING],
    "preflight/passed+loading": [HELLO, SCREENING, LOADING],
    "preflight/checking+loading": [HELLO, LOADING],
    "ready/start": [HELLO, SCREENING, LOADING, READY],
    "ready/start after a preload error": [HELLO, SCREENING, FAILED],
    "ready/instructions": [HELLO, SCREENING, READY, ADVANCE],
    "in_game": [HELLO, SCREENING, READY, ADVANCE, ADVANCE],
    "completed": [HELLO, SCREENING, READY, ADVANCE, ADVANCE, GAME_OVER, ADVANCE],
    "excluded": [HELLO, SMALL_SCREEN],
}
"""How to bring a participant of the built-in example to each situation (`state/where`): the messages, in order.

Each message's `type` is the trigger it fires, so the same table drives a `Session` directly and a socket.
"""


async def bring(url: str, situation: str, participant_id: str) -> tuple[ProtocolClient, dict | None]:
    """A participant brought to `situation`; returns the client (still open) and the last `state` it was sent.

    Each message changes the state, so waiting for the next `state` after each one means the server is done with it.
    """
    client = await ProtocolClient.connect(url, timeout=10)
    state = None
    for message in SITUATIONS[situation]:
        if message is HELLO:
            message = {**HELLO, "participant_id": participant_id}
        await client.send(message)
        seen = await client.recv_until(lambda m: m["type"] in ("state", "error"))
        if seen[-1]["type"] == "error":
            raise AssertionError(f"{situation}: {message} refused: {seen[-1]}")
        state = seen[-1]
    return client, state


def true_states(last_state: dict | None) -> set[str]:
    """The states a participant is in, from the last `state` message the server sent them (none: just connected)."""
    if last_state is None:
        return {INITIAL}
    name = last_state["state"]
    out = {name}
    for region, leaf in (last_state.get("regions") or {}).items():
        out |= {SEPARATOR.join((name, region)), SEPARATOR.join((name, region, leaf))}
    return out


class Crowd:
    """Participants on their own event loop in a thread, so a synchronous (Playwright) test can keep them connected."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.clients: list[ProtocolClient] = []

    def bring(self, url: str, situation: str, participant_id: str) -> dict | None:
        client, state = asyncio.run_coroutine_threadsafe(bring(url, situation, participant_id), self.loop).result(30)
        self.clients.append(client)
        return state

    def close(self) -> None:
        for client in self.clients:
            self.loop.call_soon_threadsafe(client.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class TimeClock:
    """Timers that fire when the test moves time on, in the order they are due."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.pending: dict[int, tuple[float, object]] = {}
        self._next = 0

    def time(self) -> float:
        return self.now

    def call_later(self, delay, callback):
        self._next += 1
        self.pending[self._next] = (self.now + max(0.0, delay), callback)
        return self._next

    def remove_timeout(self, handle):
        self.pending.pop(handle, None)

    def advance(self, seconds: float) -> None:
        until = self.now + seconds
        while True:
            due = [(t, h) for h, (t, _) in self.pending.items() if t <= until]
            if not due:
                break
            t, handle = min(due)
            self.now = max(self.now, t)
            _, callback = self.pending.pop(handle)
            callback()
        self.now = until


IN_PYODIDE = """
import {{ loadPyodide }} from {module};
import fs from "node:fs";
const py = await loadPyodide({{ indexURL: {index} }});
for (const [source, name] of {files}) py.FS.writeFile(`/home/pyodide/${{name}}`, fs.readFileSync(source));
console.log(py.runPython({code}));
"""


def run_in_pyodide(tmp_path: Path, files: list[tuple[str, str]], code: str) -> Any:
    """Run `code` in the npm Pyodide under Node, the files given copied beside it; its last line, as JSON."""
    script = tmp_path / "in_pyodide.mjs"
    script.write_text(
        IN_PYODIDE.format(
            module=json.dumps(str(PYODIDE / "pyodide.mjs")),
            index=json.dumps(f"{PYODIDE}/"),
            files=json.dumps(files),
            code=json.dumps(code),
        )
    )
    done = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_locust(
    traces: Path, url: str, out: Path, *, users: int, run_time: str, extra: tuple[str, ...] = ()
) -> tuple[subprocess.CompletedProcess[str], dict[tuple[str, str], dict[str, str]]]:
    """A Locust master and one worker replaying `traces` against `url` (a ws:// URL), headless; the master's
    result and its stats rows by (type, name). The worker's output goes to `out`/worker.log."""
    import csv
    import sys

    from client.harness import ROOT, free_port

    port = free_port()
    common = [sys.executable, "-m", "locust", "-f", str(ROOT / "client" / "locustfile.py")]
    common += ["--traces", str(traces), "--speed", "0", *extra]
    with open(out / "worker.log", "w") as log:
        worker = subprocess.Popen(
            [*common, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            master = subprocess.run(
                [
                    *common,
                    *("--master", "--headless", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port)),
                    *("--expect-workers", "1", "--users", str(users), "--spawn-rate", str(users)),
                    *("--run-time", run_time, "--host", url, "--csv", str(out / "locust"), "--only-summary"),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=90,
            )
        finally:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    rows: dict[tuple[str, str], dict[str, str]] = {}
    if master.returncode == 0:
        with open(out / "locust_stats.csv") as f:
            rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    return master, rows


def coop(players: int = 2, **rules: Any) -> Any:
    """A two-(or more-)player game of the partners example's `coop_env`, with the multiplayer rules given."""
    from server.agents import Human
    from server.experiment import EndScene, Experiment, GymScene, StartScene
    from server.multiplayer import Multiplayer

    keys = {"ArrowLeft": 0, "ArrowRight": 1}
    agents = {f"p{i}": Human(keys=keys, default_action=0) for i in range(players)}
    scene = GymScene(
        "coop",
        environment="coop_env:make",
        agents=agents,
        fps=10,
        multiplayer=Multiplayer(**{"wait_timeout_s": 30, "reconnect_timeout_s": 5, **rules}),
    )
    return Experiment("mp", [StartScene(), scene, EndScene(completion_code="DONE")])
