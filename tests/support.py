"""Helpers for tests: `python -m server` started as a researcher would, and participants held in chosen states."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from client.participant import DESKTOP_CHROMIUM, ProtocolClient
from statemachine import INITIAL, SEPARATOR

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, *flags: str, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start `python -m server` and wait until it serves; the caller stops it."""
    port = port or free_port()
    log = data_dir.parent / f"server-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port), "--data-dir", str(data_dir), *flags],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while "Participant URL" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if "Participant URL" not in log.read_text():
        proc.kill()
        proc.wait(timeout=10)
        raise RuntimeError(f"server did not start: {log.read_text()}")
    return proc, f"http://127.0.0.1:{port}/"


@contextmanager
def served(data_dir: Path, *flags: str) -> Iterator[str]:
    """Run `python -m server` on a free port until the block ends; yields the participant URL."""
    with server_process(data_dir, *flags) as (url, _):
        yield url


@contextmanager
def server_process(data_dir: Path, *flags: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`served`, also handing over the process (to kill it mid-run)."""
    proc, url = start_server(data_dir, *flags)
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)


# -- simulated participants held in chosen states ---------------------------------------------------------------

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
    "checking+idle": [HELLO],
    "passed+idle": [HELLO, SCREENING],
    "passed+loading": [HELLO, SCREENING, LOADING],
    "checking+loading": [HELLO, LOADING],
    "ready at start": [HELLO, SCREENING, LOADING, READY],
    "ready after a preload error": [HELLO, SCREENING, FAILED],
    "ready at instructions": [HELLO, SCREENING, READY, ADVANCE],
    "in game": [HELLO, SCREENING, READY, ADVANCE, ADVANCE],
    "completed": [HELLO, SCREENING, READY, ADVANCE, ADVANCE, GAME_OVER, ADVANCE],
    "excluded": [HELLO, SMALL_SCREEN],
}
"""How to bring a participant of the built-in example to each situation: the messages, in order."""


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
