"""Participant data on disk: one append-only msgpack stream per session.

Each record is written straight to the OS as it happens, so a killed server
loses at most the record it was writing; `read_records` skips such a torn tail.
Frames in both directions are recorded next to the session's own records, so a
session can be analysed, and replayed, from its file alone.
"""

from __future__ import annotations

import os
import platform
import secrets
import struct
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import msgpack

MAX_OPEN_FILES = 1024
"""Session files kept open at once: 10,000 sessions must not need 10,000 more descriptors."""


class FilePool:
    """Append-only descriptors for session files, least recently written closed first."""

    def __init__(self, capacity: int = MAX_OPEN_FILES) -> None:
        self.capacity = capacity
        self._open: OrderedDict[str, int] = OrderedDict()

    def append(self, path: str, data: bytes) -> None:
        fd = self._open.get(path)
        if fd is None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._open[path] = fd
            if len(self._open) > self.capacity:
                os.close(self._open.popitem(last=False)[1])
        else:
            self._open.move_to_end(path)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def release(self, path: str) -> None:
        fd = self._open.pop(path, None)
        if fd is not None:
            os.close(fd)

    @property
    def open_files(self) -> int:
        return len(self._open)


_PACK = msgpack.Packer(use_bin_type=True).pack
_FRAME_HEAD = {
    direction: bytes([0x85]) + _PACK("kind") + _PACK("frame") + _PACK("dir") + _PACK(direction)
    for direction in ("in", "out")
}
_T, _WALL, _MESSAGE, _RAW = _PACK("t"), _PACK("wall"), _PACK("message"), _PACK("raw")


def _float(value: float) -> bytes:
    return b"\xcb" + struct.pack(">d", value)


class SessionLog:
    """The sink a session writes its records to."""

    __slots__ = ("_closed", "_pool", "path")

    def __init__(self, path: Path, pool: FilePool | None = None) -> None:
        self.path = str(path)
        self._pool = pool if pool is not None else FilePool(1)
        self._closed = False
        self._pool.append(self.path, b"")

    def __call__(self, record: dict[str, Any]) -> None:
        if not self._closed:
            self._pool.append(self.path, _PACK(record))

    def frame(self, direction: str, frame: bytes | str, valid: bool) -> None:
        """Record one WebSocket frame; a valid msgpack frame is spliced in as it is, never encoded twice."""
        if self._closed:
            return
        head = _FRAME_HEAD[direction] + _T + _float(time.monotonic()) + _WALL + _float(time.time())
        if valid and isinstance(frame, bytes):
            self._pool.append(self.path, head + _MESSAGE + frame)
        else:
            self._pool.append(self.path, head + _RAW + _PACK(frame))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.release(self.path)


def record_frame(
    sink: Callable[[dict[str, Any]], None], direction: str, frame: bytes | str, valid: bool = True
) -> None:
    """Record a frame `in` (as received; `valid` once it decoded) or `out` (as sent) if the sink keeps frames."""
    if isinstance(sink, SessionLog):
        sink.frame(direction, frame, valid)


def server_environment() -> dict[str, Any]:
    """The server side's own versions: what a reproduction must install besides the experiment."""
    versions: dict[str, str | None] = {}
    for name in ("tornado", "transitions", "msgpack"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "packages": versions}


class DataStore:
    """The data directory: `study.msgpack` describes the study, `sessions/` holds one file per session."""

    def __init__(self, root: Path, max_open_files: int = MAX_OPEN_FILES) -> None:
        self.root = root
        self.sessions = root / "sessions"
        self.sessions.mkdir(parents=True, exist_ok=True)
        self.pool = FilePool(max_open_files)
        self.journal = root / "snapshots.msgpack"
        self._journal: int | None = None

    def describe_study(self, description: dict[str, Any]) -> None:
        """Append what was served, so every session in this directory can be traced to a definition."""
        with open(self.root / "study.msgpack", "ab", buffering=0) as f:
            f.write(msgpack.packb({**description, "server_environment": server_environment()}, use_bin_type=True))

    def open_session(self, session_id: str | None = None) -> tuple[str, SessionLog]:
        """A new session's log, or, given its id, the log of a session carried over from before a restart."""
        while session_id is None:
            candidate = secrets.token_hex(8)
            if not (self.sessions / f"{candidate}.msgpack").exists():
                session_id = candidate
        return session_id, SessionLog(self.sessions / f"{session_id}.msgpack", self.pool)

    def save_snapshot(self, saved: dict[str, Any]) -> None:
        """Append a session's latest snapshot to the journal: one `os.write`, cheap enough for every state change."""
        if self._journal is None:
            self._journal = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            weakref.finalize(self, os.close, self._journal)
        view = memoryview(_PACK(saved))
        while view:
            view = view[os.write(self._journal, view) :]

    def snapshots(self) -> list[dict[str, Any]]:
        """Each session's last snapshot, read at start-up; the journal is then rewritten with only those.

        A torn last snapshot (a kill mid-write) is skipped: that session resumes from the one before it.
        """
        if not self.journal.exists():
            return []
        latest: dict[str, dict[str, Any]] = {}
        for saved in read_records(self.journal):
            if isinstance(saved, dict) and isinstance(saved.get("session_id"), str):
                latest[saved["session_id"]] = saved
        compacted = self.journal.with_suffix(".tmp")
        with open(compacted, "wb") as f:
            for saved in latest.values():
                f.write(_PACK(saved))
        os.replace(compacted, self.journal)
        return list(latest.values())


def read_records(path: os.PathLike[str] | str) -> Iterator[dict[str, Any]]:
    """Every complete record in a stream, in order; a torn last record is skipped."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            unpacker.feed(chunk)
            try:
                yield from unpacker
            except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError):
                return


def torn_bytes(path: os.PathLike[str] | str) -> int:
    """How many bytes at the end of a stream belong to no complete record (a write the process died in)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    complete = 0
    with open(path, "rb") as f:
        data = f.read()
    unpacker.feed(data)
    try:
        for _ in unpacker:
            complete = unpacker.tell()
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError):
        pass
    return len(data) - complete
