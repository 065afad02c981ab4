"""What tests and benchmarks share: `python -m server` in a subprocess, Debian's Chromium, records read back.

One copy, so that a test and a benchmark always start the server, the browser and read the data the same way.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.store import read_records

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

ROOT = Path(__file__).resolve().parent.parent
SERVER_START_S = 30.0
ONE_ADDRESS_IS_MANY = ("--sessions-per-ip", "1000000", "--max-connections-per-ip", "1000000")
"""A load test's crowd comes from one address; a real one comes from many, so the per-address limits are lifted."""
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    """A port nothing listens on right now, so parallel servers never collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, *flags: str, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m server` and wait until it serves; the caller stops it.

    Its output goes to `server-<port>.log` next to `data_dir`, so a full pipe never stalls it.
    """
    port = port or free_port()
    log = data_dir.parent / f"server-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port), "--data-dir", str(data_dir), *flags],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + SERVER_START_S
    while "Participant URL" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if "Participant URL" not in log.read_text():
        stop_server(proc)
        raise RuntimeError(f"server did not start: {log.read_text()}")
    return proc, f"http://127.0.0.1:{port}/"


def port_of(url: str) -> int:
    """The port of a URL `start_server` returned."""
    return int(url.rsplit(":", 1)[1].strip("/"))


def crash_and_restart(proc: subprocess.Popen[bytes], data_dir: Path, url: str, *flags: str) -> subprocess.Popen[bytes]:
    """`kill -9` the server, then start it again on the same data and port: a crash, and the restart after it."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    return start_server(data_dir, *flags, port=port_of(url))[0]


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Terminate, and kill if it will not go, so a stuck server never outlives its test or benchmark."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def served(data_dir: Path, *flags: str) -> Iterator[str]:
    """Run `python -m server` on a free port until the block ends; yields the participant URL."""
    with server_process(data_dir, *flags) as (url, _):
        yield url


@contextmanager
def server_process(data_dir: Path, *flags: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`served`, also handing over the process (to kill it mid-run)."""
    proc, url = start_server(data_dir, *flags)
    try:
        yield url, proc
    finally:
        stop_server(proc)


def masked_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One masked WebSocket frame (binary unless told), as a client must send it, for clients written by hand."""
    mask = os.urandom(4)
    size = len(payload)
    length = bytes([0x80 | size]) if size < 126 else b"\xfe" + struct.pack("!H", size)
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame a server sent (unmasked, unfragmented): its opcode and payload."""
    head, size = await reader.readexactly(2)
    size &= 0x7F
    if size >= 126:
        size = int.from_bytes(await reader.readexactly(2 if size == 126 else 8), "big")
    return head & 0x0F, await reader.readexactly(size)


def upgrade(port: int, user_agent: str = "bench") -> bytes:
    """The request that opens `/ws`, as bytes to write on a plain socket."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n"
        f"User-Agent: {user_agent}\r\n\r\n"
    ).encode()


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium (Playwright never downloads a browser here), headless, with nothing phoning home."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def sessions_by_participant(data_dir: Path) -> dict[str, list[list[dict[str, Any]]]]:
    """Every session the server wrote under `data_dir` that began, grouped by participant id, in file order."""
    found: dict[str, list[list[dict[str, Any]]]] = {}
    for path in sorted((data_dir / "sessions").glob("*.msgpack")):
        records = list(read_records(path))
        begin = next((r for r in records if r["kind"] == "begin"), None)
        if begin is not None:
            found.setdefault(begin["participant_id"], []).append(records)
    return found


def records_of(data_dir: Path, participant_id: str) -> list[dict[str, Any]]:
    """The records of the one session `participant_id` began; none or several is an error."""
    sessions = sessions_by_participant(data_dir).get(participant_id, [])
    if len(sessions) != 1:
        raise LookupError(f"{participant_id!r} began {len(sessions)} sessions in {data_dir}, not one")
    return sessions[0]
