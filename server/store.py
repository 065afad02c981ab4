"""Participant data on disk: one append-only msgpack stream per session.

Each record is written straight to the OS as it happens, so a killed server
loses at most the record it was writing; `read_records` skips such a torn tail.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import msgpack


class SessionLog:
    """The sink a session writes its records to; closed while the session is parked, reopened by the next record."""

    __slots__ = ("path", "_file", "_pack")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def __call__(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self._file = open(self.path, "ab", buffering=0)
        self._file.write(self._pack(record))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class DataStore:
    """The data directory: `study.msgpack` describes the study, `sessions/` holds one file per session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sessions = root / "sessions"
        self.sessions.mkdir(parents=True, exist_ok=True)

    def describe_study(self, description: dict[str, Any]) -> None:
        """Append what was served, so every session in this directory can be traced to a definition."""
        with open(self.root / "study.msgpack", "ab", buffering=0) as f:
            f.write(msgpack.packb(description, use_bin_type=True))

    def open_session(self, session_id: str | None = None) -> tuple[str, SessionLog]:
        """A new session's log, or, given its id, the log of a session carried over from before a restart."""
        while session_id is None:
            candidate = secrets.token_hex(8)
            if not (self.sessions / f"{candidate}.msgpack").exists():
                session_id = candidate
        return session_id, SessionLog(self.sessions / f"{session_id}.msgpack")

    def save_snapshot(self, saved: dict[str, Any]) -> None:
        """Replace a session's snapshot atomically: a kill leaves the old one or the new one, never half of each."""
        path = self.sessions / f"{saved['session_id']}.state"
        tmp = path.with_suffix(".state.tmp")
        with open(tmp, "wb", buffering=0) as f:
            f.write(msgpack.packb(saved, use_bin_type=True))
        os.replace(tmp, path)

    def snapshots(self) -> Iterator[dict[str, Any]]:
        """Every session's last snapshot; unreadable ones are skipped (and reported by the caller)."""
        for path in sorted(self.sessions.glob("*.state")):
            try:
                saved = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
            except (OSError, ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                continue
            if isinstance(saved, dict) and "session_id" in saved:
                yield saved


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
