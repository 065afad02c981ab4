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
    """The sink a session writes its records to."""

    __slots__ = ("path", "_file", "_pack")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = open(path, "ab", buffering=0)
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def __call__(self, record: dict[str, Any]) -> None:
        if self._file is not None:
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

    def open_session(self) -> tuple[str, SessionLog]:
        while True:
            session_id = secrets.token_hex(8)
            path = self.sessions / f"{session_id}.msgpack"
            if not path.exists():
                return session_id, SessionLog(path)


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
