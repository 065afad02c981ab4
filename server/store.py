"""Participant data on disk: one append-only stream of framed msgpack records per session.

Records reach the OS with `os.write`, never through a user-space file buffer. In the server, what one
event (a message, a timer, a close) records waits in memory only until that event is done: it is
written, one `os.write` per file, before anything is sent to a socket, and at the latest on the next
turn of the event loop. So whatever a participant was sent, or told was stored, is on disk, and a
killed server loses at most the records of the event it was handling, none of whose effects had left
it. Every record is framed (a marker byte msgpack never uses, the length, a CRC-32), so `read_records`
skips a torn or damaged record wherever it is and still reads everything after it.
Frames in both directions are recorded next to the session's own records, so a
session can be analysed, and replayed, from its file alone.

When a write fails (a full disk, a permission taken away), the pool keeps the
records in memory, in order, and `retry` writes them once the cause is gone;
the study refuses new participants meanwhile.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import secrets
import struct
import time
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import msgpack

log = logging.getLogger("preflight")

MAX_OPEN_FILES = 1024
"""Session files kept open at once: 10,000 sessions must not need 10,000 more descriptors."""


class FilePool:
    """Append-only descriptors for session files, least recently written closed first.

    Given `defer` (the server passes `IOLoop.add_callback`), appended records are gathered per file and
    written by `flush`, one `os.write` per file, which `defer` schedules when the first record is gathered;
    whoever sends anything calls `flush` first. Without it every record is written as it is appended.

    A write that fails leaves the pool `failing`: from then on every record waits in memory, in
    order per file, until `retry` has written all of them.
    """

    def __init__(
        self,
        capacity: int = MAX_OPEN_FILES,
        on_failure: Callable[[], None] | None = None,
        defer: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.capacity = capacity
        self.on_failure = on_failure  # told when writes start failing, so someone schedules `retry`
        self.defer = defer
        self._gathered: dict[str, list[bytes]] = {}  # path -> records of the current event, not written yet
        self._flush_due = False  # a flush is scheduled
        self._progress = 0  # bytes of the current `_write` already written, for a write cut short
        self._open: OrderedDict[str, int] = OrderedDict()
        self._released: set[str] = set()  # files closed while records for them still waited
        self._kept: dict[str, int | None] = {}  # files kept open outside the LRU (the snapshot journal)
        self.pending: dict[str, list[bytes]] = {}  # path -> records not written yet, oldest first
        self.failure: OSError | None = None  # the last write error, until every pending record is written
        self.failed_at: float | None = None  # wall-clock time the current failure began

    def append(self, path: str, data: bytes) -> None:
        if self.failure is not None:
            self.pending.setdefault(path, []).append(data)
            return
        if self.defer is not None:
            gathered = self._gathered.get(path)
            if gathered is not None:
                gathered.append(data)
                return
            self._gathered[path] = [data]
            if not self._flush_due:
                self._flush_due = True
                self.defer(self._scheduled_flush)
            return
        try:
            self._write(path, data)
        except OSError as exc:
            self.pending.setdefault(path, []).append(data)
            self._failed(exc)

    def create(self, path: str) -> bool:
        """Create a new file to append to, in one system call; False if `path` exists already."""
        if self.failure is not None:
            if os.path.exists(path):
                return False
            self.pending.setdefault(path, []).append(b"")
            return True
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            self.pending.setdefault(path, []).append(b"")
            self._failed(exc)
            return True
        self._open[path] = fd
        if len(self._open) > self.capacity:
            os.close(self._open.popitem(last=False)[1])
        return True

    def hold(self) -> bool:
        """Gather without scheduling a flush: the caller handles an event and calls `unhold` when it is done."""
        due, self._flush_due = self._flush_due, True
        return due

    def unhold(self, due: bool) -> None:
        """The event `hold` began is done. What it gathered is written before anything is sent (sending writes it)
        and at the latest on the loop's next turn, with what later events of this turn gather: messages read
        together that send nothing back (a page's batches of steps) cost one write, not one each."""
        if self._gathered and not due:
            if self.defer is None:
                self.flush()
            else:
                self.defer(self._scheduled_flush)
                due = True
        self._flush_due = due

    def _scheduled_flush(self) -> None:
        self._flush_due = False
        self.flush()

    def flush(self) -> None:
        """Write every gathered record, one `os.write` per file; files kept open (the snapshot journal) last, so
        a snapshot on disk never runs ahead of the session records that led to it."""
        if not self._gathered:
            return
        gathered, self._gathered = self._gathered, {}
        kept = []
        for path, records in gathered.items():
            if path in self._kept:
                kept.append((path, records))
            else:
                self._write_gathered(path, records)
        for path, records in kept:
            self._write_gathered(path, records)

    def _write_gathered(self, path: str, records: list[bytes]) -> None:
        """Records of one file in one write; if it fails, the records not wholly written wait, the torn one whole."""
        if self.failure is not None:
            self.pending.setdefault(path, []).extend(records)
            return
        self._progress = 0
        try:
            self._write(path, records[0] if len(records) == 1 else b"".join(records))
        except OSError as exc:
            written, done = self._progress, 0
            if written:  # the file was open: records wholly before the cut are on disk
                while done < len(records) and len(records[done]) <= written:
                    written -= len(records[done])
                    done += 1
            self.pending.setdefault(path, []).extend(records[done:])
            self._failed(exc)

    def _write(self, path: str, data: bytes) -> None:
        """The whole record, or an OSError; a record cut short by one is skipped by readers and written again."""
        if path in self._kept:
            fd = self._kept[path]
            if fd is None:
                fd = self._kept[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        elif (fd := self._open.get(path)) is None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._open[path] = fd
            if len(self._open) > self.capacity:
                os.close(self._open.popitem(last=False)[1])
        else:
            self._open.move_to_end(path)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            self._progress += written
            view = view[written:]

    def _failed(self, exc: OSError) -> None:
        """Log a failure once per cause (errno), not once per record."""
        if self.failure is None or self.failure.errno != exc.errno:
            log.error(
                "cannot write participant data (%s: %s); new participants are refused until writes succeed again",
                errno.errorcode.get(exc.errno or 0, exc.errno),
                exc.strerror,
            )
        first = self.failure is None
        if first:
            self.failed_at = time.time()
            for path, records in self._gathered.items():  # from now on everything waits, in order
                self.pending.setdefault(path, []).extend(records)
            self._gathered.clear()
        self.failure = exc
        if first and self.on_failure is not None:
            self.on_failure()

    def retry(self) -> bool:
        """Write what waits, oldest first per file; True once nothing waits and writes succeed again."""
        if self.failure is None:
            return True
        for path in list(self.pending):
            queue = self.pending[path]
            while queue:
                try:
                    self._write(path, queue[0])
                except OSError as exc:
                    self._failed(exc)
                    return False
                queue.pop(0)
            del self.pending[path]
            if path in self._released:
                self._released.discard(path)
                self.release(path)
        log.warning(
            "participant data is written again; %.0f s of records caught up", time.time() - (self.failed_at or 0)
        )
        self.failure = None
        self.failed_at = None
        return True

    @property
    def pending_records(self) -> int:
        return sum(len(q) for q in self.pending.values())

    def keep_open(self, path: str) -> None:
        """Write `path` through the pool, failures included, on a descriptor of its own that is never evicted."""
        self._kept.setdefault(path, None)

    def release(self, path: str) -> None:
        gathered = self._gathered.pop(path, None)
        if gathered:
            self._write_gathered(path, gathered)
        if path in self.pending:
            self._released.add(path)  # closed once `retry` has written what waits for it
        fd = self._open.pop(path, None)
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        self.flush()
        while self._open:
            os.close(self._open.popitem()[1])
        for path, fd in self._kept.items():
            if fd is not None:
                os.close(fd)
                self._kept[path] = None

    @property
    def open_files(self) -> int:
        return len(self._open)


MARK = 0xC1
"""The first byte of every record's frame: a byte msgpack never uses, so a reader can find the next record."""
_HEAD = struct.Struct(">BII")  # mark, payload length, CRC-32 of the payload


def framed(payload: bytes) -> bytes:
    """One msgpack record as it is stored: mark, length and checksum, then the record itself."""
    return _HEAD.pack(MARK, len(payload), zlib.crc32(payload)) + payload


_PACK = msgpack.Packer(use_bin_type=True).pack
_FRAME_HEAD = {
    direction: bytes([0x85]) + _PACK("kind") + _PACK("frame") + _PACK("dir") + _PACK(direction)
    for direction in ("in", "out")
}
_T, _WALL, _MESSAGE, _RAW = _PACK("t"), _PACK("wall"), _PACK("message"), _PACK("raw")


def _float(value: float) -> bytes:
    return b"\xcb" + struct.pack(">d", value)


class SessionLog:
    """The sink a session writes its records to.

    A `steps` record whose steps are those of the `in` frame recorded last is written without them, marked
    `in_frame`: the batch is on disk once, in the frame, and `read_records` puts it back into the record.
    """

    __slots__ = ("_closed", "_in_steps", "_pool", "path")

    def __init__(self, path: Path | str, pool: FilePool | None = None, *, created: bool = False) -> None:
        self.path = str(path)
        self._pool = pool if pool is not None else FilePool(1)
        self._closed = False
        self._in_steps: object = None  # the `steps` of the last `in` frame, until a record names them
        if not created:  # `FilePool.create` made it already
            self._pool.append(self.path, b"")

    def __call__(self, record: dict[str, Any]) -> None:
        if self._closed:
            return
        steps = record.get("steps")
        if steps is not None and steps is self._in_steps:
            self._in_steps = None
            record = {key: value for key, value in record.items() if key != "steps"}
            record["in_frame"] = True
        self._pool.append(self.path, framed(_PACK(record)))

    def frame(self, direction: str, frame: bytes | str, valid: bool, message: Mapping[str, Any] | None = None) -> None:
        """Record one WebSocket frame; a valid msgpack frame is spliced in as it is, never encoded twice. Given the
        `message` a valid `in` frame decodes to, a `steps` record of its steps refers to the frame instead."""
        if self._closed:
            return
        self._in_steps = message.get("steps") if message is not None and direction == "in" and valid else None
        head = _FRAME_HEAD[direction] + _T + _float(time.monotonic()) + _WALL + _float(time.time())
        if valid and isinstance(frame, bytes):
            self._pool.append(self.path, framed(head + _MESSAGE + frame))
        else:
            self._pool.append(self.path, framed(head + _RAW + _PACK(frame)))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.release(self.path)


def record_frame(
    sink: Callable[[dict[str, Any]], None],
    direction: str,
    frame: bytes | str,
    valid: bool = True,
    message: Mapping[str, Any] | None = None,
) -> None:
    """Record a frame `in` (as received; `valid` once it decoded, to `message`) or `out` (as sent) if the sink keeps
    frames."""
    if isinstance(sink, SessionLog):
        sink.frame(direction, frame, valid, message)


def server_environment() -> dict[str, Any]:
    """The server side's own versions: what a reproduction must install besides the experiment."""
    versions: dict[str, str | None] = {}
    for name in ("tornado", "transitions", "msgpack"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "packages": versions}


def _close_descriptors(pooled: dict[str, int], kept: dict[str, int | None]) -> None:
    for fd in [*pooled.values(), *kept.values()]:
        if fd is not None:
            os.close(fd)
    pooled.clear()
    kept.clear()


class DataStore:
    """The data directory: `study.msgpack` describes the study, `sessions/` holds one file per session."""

    def __init__(
        self,
        root: Path,
        max_open_files: int = MAX_OPEN_FILES,
        on_failure: Callable[[], None] | None = None,
        defer: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.root = root
        self.sessions = root / "sessions"
        self.sessions.mkdir(parents=True, exist_ok=True)
        self._sessions_dir = f"{self.sessions}{os.sep}"
        self.matches = root / "matches"
        self.pool = FilePool(max_open_files, on_failure, defer)
        self.journal = root / "snapshots.msgpack"
        self._journal_path = str(self.journal)
        self.pool.keep_open(self._journal_path)
        # Only the descriptor tables: a finalizer holding the pool would keep its `on_failure` owner alive forever.
        weakref.finalize(self, _close_descriptors, self.pool._open, self.pool._kept)

    def served_before(self) -> str | None:
        """The name of the experiment this directory's last server start served, if any."""
        last = None
        try:
            with open(self.root / "study.msgpack", "rb") as f:
                for last in msgpack.Unpacker(f, raw=False, strict_map_key=False):  # noqa: B007
                    pass
        except (OSError, ValueError, msgpack.UnpackException):  # none yet, or a damaged one: nothing to compare
            pass
        experiment = last.get("experiment") if isinstance(last, dict) else None
        return str(experiment.get("name")) if isinstance(experiment, dict) else None

    def describe_study(self, description: dict[str, Any]) -> None:
        """Append what was served, so every session in this directory can be traced to a definition."""
        with open(self.root / "study.msgpack", "ab", buffering=0) as f:
            f.write(msgpack.packb({**description, "server_environment": server_environment()}, use_bin_type=True))

    def open_session(self, session_id: str | None = None) -> tuple[str, SessionLog]:
        """A new session's log, or, given its id, the log of a session carried over from before a restart."""
        if session_id is not None:
            return session_id, SessionLog(self.sessions / f"{session_id}.msgpack", self.pool)
        while True:  # created exclusively: no separate look for a file of the same name first
            candidate = secrets.token_hex(8)
            path = f"{self._sessions_dir}{candidate}.msgpack"  # joined as text: pathlib costs µs on every new session
            if self.pool.create(path):
                return candidate, SessionLog(path, self.pool, created=True)

    def open_match(self, match_id: str) -> SessionLog:
        """A match's canonical log: every frame the server closed, written before it is sent."""
        self.matches.mkdir(exist_ok=True)
        return SessionLog(self.matches / f"{match_id}.msgpack", self.pool)

    def save_snapshot(self, saved: dict[str, Any]) -> None:
        """Append a session's latest snapshot to the journal: one `os.write`, cheap enough for every state change."""
        self.pool.append(self._journal_path, framed(_PACK(saved)))

    def flush(self) -> None:
        """Write what the current event recorded: called before anything is sent to a participant."""
        self.pool.flush()

    @property
    def failing(self) -> OSError | None:
        """The write error that keeps records in memory, or None while everything reaches the disk."""
        return self.pool.failure

    def retry(self) -> bool:
        """Write the records that wait in memory; True once none wait."""
        return self.pool.retry()

    def health(self) -> dict[str, Any]:
        """What `/admin` shows of the disk: whether writes succeed, and if not why, since when, and what waits."""
        failure = self.pool.failure
        return {
            "writing": failure is None,
            "error": None
            if failure is None
            else f"{errno.errorcode.get(failure.errno or 0, failure.errno)}: {failure.strerror}",
            "since": self.pool.failed_at,
            "pending_records": self.pool.pending_records,
        }

    def snapshots(self) -> list[dict[str, Any]]:
        """Each session's last snapshot, read at start-up; the journal is then rewritten with only those.

        A torn snapshot (a kill mid-write) is skipped: that session resumes from the one before it.
        Nothing unreadable is thrown away: if any bytes could not be read, the journal as it was is
        moved aside (`snapshots.msgpack.unreadable-<time>`) before the compacted one replaces it.
        """
        if not self.journal.exists():
            return []
        latest: dict[str, dict[str, Any]] = {}
        reader = Reader(self.journal)
        for saved in reader:
            if isinstance(saved, dict) and isinstance(saved.get("session_id"), str):
                latest[saved["session_id"]] = saved
        compacted = self.journal.with_suffix(".tmp")
        try:
            with open(compacted, "wb") as f:
                for saved in latest.values():
                    f.write(framed(_PACK(saved)))
            if reader.skipped:
                aside = self.journal.with_name(f"{self.journal.name}.unreadable-{int(time.time())}")
                os.link(self.journal, aside)
                log.warning(
                    "snapshot journal: %d unreadable bytes skipped; the journal as it was is kept as %s",
                    reader.skipped,
                    aside,
                )
            os.replace(compacted, self.journal)
        finally:
            compacted.unlink(missing_ok=True)
        return list(latest.values())


class Reader:
    """Every whole record of a stream, in order; `skipped` counts bytes that belong to none, once read through.

    A framed record whose length or checksum does not hold is skipped up to the next mark. Streams
    written before records were framed (plain msgpack back to back) are read up to their first
    damaged record, and any framed records appended after them are still read.
    """

    def __init__(self, path: os.PathLike[str] | str) -> None:
        self.path = path
        self.skipped = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with open(self.path, "rb") as f:
            data = f.read()
        pos = 0
        if data and data[0] != MARK:
            pos = yield from self._plain(data)
        end = len(data)
        size = _HEAD.size
        in_steps: Any = None  # the `steps` of the last `in` frame read, for the `steps` record that refers to it
        while pos < end:
            if data[pos] == MARK and pos + size <= end:
                _, length, crc = _HEAD.unpack_from(data, pos)
                stop = pos + size + length
                if stop <= end:
                    payload = data[pos + size : stop]
                    if zlib.crc32(payload) == crc:
                        try:
                            record = msgpack.unpackb(payload, raw=False, strict_map_key=False)
                        except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError):
                            record = None
                        if isinstance(record, dict):  # every record is a map; anything else is not one of ours
                            kind = record.get("kind")
                            if kind == "frame" and record.get("dir") == "in":
                                message = record.get("message")
                                in_steps = message.get("steps") if isinstance(message, dict) else None
                            elif kind == "steps" and record.get("in_frame") is True and "steps" not in record:
                                if isinstance(in_steps, list):  # else its frame was damaged: the steps are lost
                                    del record["in_frame"]
                                    record["steps"], in_steps = in_steps, None
                                else:
                                    record["steps"] = []
                            yield record
                            pos = stop
                            continue
            following = data.find(MARK, pos + 1)
            following = end if following < 0 else following
            self.skipped += following - pos
            pos = following

    def _plain(self, data: bytes) -> Generator[dict[str, Any], None, int]:
        """Unframed records from the start; returns where they stop."""
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(data)
        complete = 0
        try:
            for record in unpacker:
                if not isinstance(record, dict):  # not a stream of records (a text file's bytes read as numbers)
                    break
                complete = unpacker.tell()
                yield record
        except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError):
            pass
        return complete


def read_records(path: os.PathLike[str] | str) -> Iterator[dict[str, Any]]:
    """Every whole record in a stream, in order; torn or damaged records are skipped, wherever they are."""
    yield from Reader(path)


def torn_bytes(path: os.PathLike[str] | str) -> int:
    """How many bytes of a stream belong to no whole record (a write the process died in, or damage)."""
    reader = Reader(path)
    for _ in reader:
        pass
    return reader.skipped
