"""Storage faults: torn records anywhere, a damaged snapshot journal, and writes that fail (a full disk)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import errno
import logging
import os
import shutil
import subprocess
from pathlib import Path

import msgpack
import pytest

from client.harness import server_process
from client.participant import ProtocolClient, walk
from server.admin import counts
from server.export import export
from server.protocol import Close
from server.store import DataStore, FilePool, SessionLog, framed, read_records, torn_bytes
from server.study import Study


def _tear(path: Path, at_record: int) -> int:
    """Put half of a framed record after record `at_record` of a stream, as a write cut short would; its size."""
    data = path.read_bytes()
    pos = 0
    for _ in range(at_record):
        pos += 9 + int.from_bytes(data[pos + 1 : pos + 5], "big")
    torn = framed(msgpack.packb({"kind": "torn", "data": "y" * 40}))[:25]
    path.write_bytes(data[:pos] + torn + data[pos:])
    return len(torn)


def test_a_record_torn_mid_file_is_skipped_and_every_later_record_still_reads(tmp_path):
    path = tmp_path / "s.msgpack"
    pool = FilePool()
    log = SessionLog(path, pool)
    for i in range(10):
        log({"kind": "n", "i": i})
    pool.release(str(path))
    with open(path, "ab") as f:  # a write the disk cut short, then the server went on writing
        f.write(framed(msgpack.packb({"kind": "n", "i": "lost", "pad": "z" * 30}))[:17])
    for i in range(10, 20):
        log({"kind": "n", "i": i})
    log.close()
    assert [r["i"] for r in read_records(path)] == list(range(20))
    assert torn_bytes(path) == 17


def test_a_damaged_byte_loses_only_its_own_record(tmp_path):
    path = tmp_path / "s.msgpack"
    log = SessionLog(path)
    for i in range(10):
        log({"kind": "n", "i": i})
    log.close()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    read = [r["i"] for r in read_records(path)]
    assert len(read) == 9 and read == sorted(read) and read[0] == 0 and read[-1] == 9
    assert torn_bytes(path) > 0


def test_files_written_before_records_were_framed_still_read(tmp_path):
    path = tmp_path / "old.msgpack"
    path.write_bytes(b"".join(msgpack.packb({"kind": "n", "i": i}) for i in range(5)) + b"\x85\xa4ki")
    assert [r["i"] for r in read_records(path)] == list(range(5))
    assert torn_bytes(path) == 4
    log = SessionLog(path)  # the upgraded server appends framed records to the old file
    log({"kind": "n", "i": 5})
    log.close()
    assert [r["i"] for r in read_records(path)] == list(range(6))


def test_compaction_moves_an_unreadable_journal_aside_and_keeps_every_session(tmp_path):
    store = DataStore(tmp_path)
    for n in range(200):
        store.save_snapshot({"session_id": f"s{n}", "outcome": "completed", "participant_id": f"p{n}"})
    store.pool.close_all()
    original_size = store.journal.stat().st_size
    torn = _tear(store.journal, 100)  # killed mid-write, then restarted and written on
    before = store.journal.read_bytes()
    restored = DataStore(tmp_path).snapshots()
    assert sorted(s["session_id"] for s in restored) == sorted(f"s{n}" for n in range(200))
    [aside] = tmp_path.glob("snapshots.msgpack.unreadable-*")
    assert aside.read_bytes() == before and len(before) == original_size + torn
    assert torn_bytes(store.journal) == 0 and len(list(read_records(store.journal))) == 200
    DataStore(tmp_path).snapshots()  # a clean journal is compacted without another copy
    assert len(list(tmp_path.glob("snapshots.msgpack.unreadable-*"))) == 1


@pytest.mark.gen_test(timeout=60)
async def test_completed_participants_stay_completed_after_a_torn_journal_and_restart(ws_url, config, tmp_path):
    ends = await asyncio.gather(*(walk(ws_url, participant_id=f"done-{n}", steps=2) for n in range(5)))
    assert [e["outcome"] for e in ends] == ["completed"] * 5
    journal = config.data_dir / "snapshots.msgpack"
    _tear(journal, len(list(read_records(journal))) // 2)
    [session_file, *_] = sorted((config.data_dir / "sessions").glob("*.msgpack"))
    torn = _tear(session_file, 3)
    study = Study(config)  # the server restarted on the same data
    for n in range(5):
        assert study.participants[f"done-{n}"] == "completed"
        refusal = study.admit({"type": "hello", "participant_id": f"done-{n}"})
        assert refusal is not None and refusal.code == "already_participated"
    assert list(config.data_dir.glob("snapshots.msgpack.unreadable-*"))
    export(config.data_dir, "csv", tmp_path / "out")
    with open(tmp_path / "out" / "participants.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["outcome"] for r in rows) == ["completed"] * 5
    assert {r["session_id"]: r["torn_bytes"] for r in rows}[session_file.stem] == str(torn)


def test_what_one_event_records_is_written_once_per_file_the_journal_last(tmp_path, monkeypatch):
    scheduled: list = []
    store = DataStore(tmp_path, defer=scheduled.append)
    writes: list[tuple[str, bytes]] = []
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        writes.append((os.readlink(f"/proc/self/fd/{fd}"), bytes(data)))
        return real_write(fd, data)

    monkeypatch.setattr("server.store.os.write", write)
    _, log = store.open_session()
    log({"kind": "n", "i": 0})
    store.save_snapshot({"session_id": "s", "i": 0})
    log({"kind": "n", "i": 1})
    store.save_snapshot({"session_id": "s", "i": 1})
    assert writes == [] and len(scheduled) == 1  # one flush scheduled, nothing written yet
    scheduled.pop()()
    assert [Path(path).name for path, _ in writes] == [Path(log.path).name, "snapshots.msgpack"]
    assert [r["i"] for r in read_records(log.path)] == [0, 1]
    assert [r["i"] for r in read_records(store.journal)] == [0, 1]

    due = store.pool.hold()  # an event: nothing is scheduled while it is handled
    log({"kind": "n", "i": 2})
    store.pool.flush()  # it sends something: what it recorded is written first
    store.pool.unhold(due)
    assert [r["i"] for r in read_records(log.path)] == [0, 1, 2] and scheduled == []

    for i in (3, 4):  # two events of one turn that send nothing (batches of steps): one write, on the next turn
        due = store.pool.hold()
        log({"kind": "n", "i": i})
        store.pool.unhold(due)
    assert [r["i"] for r in read_records(log.path)] == [0, 1, 2] and len(scheduled) == 1
    writes.clear()
    scheduled.pop()()
    assert [Path(path).name for path, _ in writes] == [Path(log.path).name]
    assert [r["i"] for r in read_records(log.path)] == [0, 1, 2, 3, 4]

    log({"kind": "n", "i": 5})
    log.close()  # a closed file gets what was gathered for it first, and keeps no descriptor
    assert [r["i"] for r in read_records(log.path)] == [0, 1, 2, 3, 4, 5] and store.pool.open_files == 0
    scheduled.pop()()
    assert store.pool.open_files == 0


def test_a_gathered_write_cut_short_leaves_exactly_the_unwritten_records_waiting(tmp_path, monkeypatch):
    scheduled: list = []
    pool = FilePool(defer=scheduled.append)
    path = tmp_path / "s.msgpack"
    log = SessionLog(path, pool)
    pool.flush()
    records = [framed(msgpack.packb({"kind": "n", "i": i, "pad": "x" * 20})) for i in range(5)]
    for i in range(5):
        log({"kind": "n", "i": i, "pad": "x" * 20})
    real_write = os.write
    cut = len(records[0]) + len(records[1]) + 7  # two records whole, the third torn

    def full_disk(fd: int, data: bytes) -> int:
        nonlocal cut
        if cut == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real_write(fd, bytes(data[:cut]))
        cut -= written
        return written

    monkeypatch.setattr("server.store.os.write", full_disk)
    pool.flush()
    assert pool.failure is not None and pool.pending_records == 3
    log({"kind": "n", "i": 5, "pad": "x" * 20})  # while failing, records wait behind those
    assert pool.pending_records == 4
    monkeypatch.setattr("server.store.os.write", real_write)
    assert pool.retry() and pool.pending_records == 0
    log.close()
    assert [r["i"] for r in read_records(path)] == list(range(6))
    assert torn_bytes(path) == 7


class FailingDisk:
    """The pool's writer, failing with `errno` while `full` is set."""

    def __init__(self, pool: FilePool) -> None:
        self.write = pool._write
        self.full = False
        self.refused = 0

    def __call__(self, path: str, data: bytes) -> None:
        if self.full:
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.write(path, data)


@pytest.mark.gen_test(timeout=30)
async def test_a_failing_disk_refuses_newcomers_serves_those_in_progress_and_recovers(app, ws_url, connect, caplog):
    study = app.settings["study"]
    disk = FailingDisk(study.store.pool)
    study.store.pool._write = disk
    fds_before = len(os.listdir("/proc/self/fd"))
    walking = await connect()
    await walking.send({"type": "hello", "participant_id": "in-progress"})
    await walking.until_state("preflight")

    disk.full = True
    with caplog.at_level(logging.ERROR, logger="preflight"):
        await walking.send({"type": "screening", "facts": {}})  # served from memory
        await walking.recv()
        newcomer = await connect()
        await newcomer.send({"type": "hello", "participant_id": "newcomer"})
        refusal = await newcomer.recv()
        assert refusal is not None and refusal["code"] == "storage_unavailable"
        assert await newcomer.recv() is None and newcomer.conn.close_code == Close.UNAVAILABLE
        health = counts(study)["storage"]
        assert health["writing"] is False and health["error"].startswith("ENOSPC") and health["pending_records"] > 0
        await asyncio.sleep(1.5)  # a retry or two fail as well
    assert disk.refused >= 2
    assert len([r for r in caplog.records if r.levelno == logging.ERROR and "cannot write" in r.message]) == 1

    disk.full = False
    for _ in range(100):
        if study.store.failing is None:
            break
        await asyncio.sleep(0.05)
    assert counts(study)["storage"] == {"writing": True, "error": None, "since": None, "pending_records": 0}
    back = await connect()
    await back.send({"type": "hello", "participant_id": "newcomer"})
    assert (await back.until_type("experiment_config"))["type"] == "experiment_config"
    walking.close()
    back.close()
    await asyncio.sleep(0.2)
    records = [r for f in sorted((study.store.sessions).glob("*.msgpack")) for r in read_records(f)]
    inbound = [r["message"]["type"] for r in records if r["kind"] == "frame" and r["dir"] == "in"]
    assert inbound.count("screening") == 1 and inbound.count("hello") == 2
    assert all(torn_bytes(f) == 0 for f in study.store.sessions.glob("*.msgpack"))
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 4  # the three sockets, give or take one


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "4m"):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_really_full_disk_refuses_newcomers_until_space_returns(tmp_path):
    async def story(url: str, disk: Path) -> None:
        ws = url.replace("http", "ws") + "ws"
        opened: list[ProtocolClient] = []
        try:
            await steps(ws, disk, opened)
        finally:
            for client in opened:
                client.close()
            await asyncio.sleep(0.3)  # let the close handshakes finish before the loop ends
            for client in opened:
                if client.conn.stream is not None and not client.conn.stream.closed():
                    client.conn.stream.close()

    async def steps(ws: str, disk: Path, opened: list[ProtocolClient]) -> None:
        early = await ProtocolClient.connect(ws)
        opened.append(early)
        await early.send({"type": "hello", "participant_id": "early"})
        await early.until_state("preflight")
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as f:
            for chunk in (65536, 4096, 1):
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * chunk)
        for _ in range(100):  # more than fits in the last pages the files already have
            await early.send({"type": "ack", "seq": 0})
        await early.send({"type": "screening", "facts": {}})
        await early.recv()
        newcomer = await ProtocolClient.connect(ws)
        opened.append(newcomer)
        await newcomer.send({"type": "hello", "participant_id": "late"})
        reply = await newcomer.recv()
        assert reply is not None and reply["code"] == "storage_unavailable"
        filler.unlink()
        await asyncio.sleep(2.5)
        again = await ProtocolClient.connect(ws)
        opened.append(again)
        await again.send({"type": "hello", "participant_id": "late"})
        assert (await again.until_type("experiment_config"))["type"] == "experiment_config"

    with tmpfs(tmp_path / "disk") as disk:
        data = disk / "data"
        with server_process(data) as (url, _):
            asyncio.run(story(url, disk))
        records = [r for f in (data / "sessions").glob("*.msgpack") for r in read_records(f)]
        hellos = [r["message"].get("participant_id") for r in records if r["kind"] == "frame" and r["dir"] == "in"]
        assert "early" in hellos and "late" in hellos
