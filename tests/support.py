"""Helpers for tests that start `python -m server` as a researcher would."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(data_dir: Path, *flags: str) -> Iterator[str]:
    """Run `python -m server` on a free port until the block ends; yields the participant URL."""
    with server_process(data_dir, *flags) as (url, _):
        yield url


@contextmanager
def server_process(data_dir: Path, *flags: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`served`, also handing over the process (to kill it mid-run)."""
    port = free_port()
    log = data_dir.parent / f"server-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port), "--data-dir", str(data_dir),
                                 *flags], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "Participant URL" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if "Participant URL" not in log.read_text():
            raise RuntimeError(f"server did not start: {log.read_text()}")
        yield f"http://127.0.0.1:{port}/", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)
