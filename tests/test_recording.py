"""Participant data on disk: frames both ways, torn tails, the study snapshot, nothing left behind."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import os
import weakref

import msgpack
import pytest

from client.participant import walk
from server.experiment import EndScene, Experiment, StartScene
from server.export import export
from server.session import Timeouts
from server.store import FilePool, SessionLog, framed, read_records, torn_bytes
from server.study import Study


async def until_closed(path) -> list[dict]:
    """The session's records once the server has seen the socket close (bounded wait)."""
    for _ in range(250):
        records = list(read_records(path))
        if records and records[-1]["kind"] == "closed":
            return records
        await asyncio.sleep(0.02)
    raise AssertionError(f"no closed record in {path}")


@pytest.mark.gen_test
@pytest.mark.config(timeouts=Timeouts(grace=0.2))  # a finished session is closed once its grace period is over
async def test_every_frame_is_recorded_both_ways_around_the_session_records(ws_url, config):
    await walk(ws_url, participant_id="rec-1")
    [path] = (config.data_dir / "sessions").glob("*.msgpack")
    records = await until_closed(path)
    frames = [r for r in records if r["kind"] == "frame"]
    assert all({"t", "wall", "dir", "message"} <= set(r) for r in frames)
    sent = [r["message"]["type"] for r in frames if r["dir"] == "in" and r["message"]["type"] != "ack"]
    assert sent[:4] == ["hello", "screening", "preload", "preload"] and sent[-1] == "advance"
    got = [r["message"] for r in frames if r["dir"] == "out"]
    assert got[0]["type"] == "experiment_config" and got[0]["participant_id"] == "rec-1"
    assert got[-1] == {
        "type": "state",
        "state": "completed",
        "may_advance": False,
        "scene_id": "end",
        "seq": got[-1]["seq"],
    }
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "frame" and records[0]["dir"] == "in"
    first_out = next(i for i, r in enumerate(records) if r.get("dir") == "out")
    assert kinds.index("begin") < first_out
    assert kinds[-1] == "closed"
    times = [r["t"] for r in records]
    assert times == sorted(times)


@pytest.mark.gen_test
@pytest.mark.config(timeouts=Timeouts(grace=0.2))
async def test_a_refused_frame_is_kept_as_it_arrived(connect, config):
    client = await connect()
    await client.send({"type": "hello"})
    await client.until_state("preflight")
    await client.send_raw(b"\xc1")
    assert (await client.recv())["code"] == "bad_message"
    client.close()
    [path] = (config.data_dir / "sessions").glob("*.msgpack")
    records = await until_closed(path)
    inbound = [r for r in records if r["kind"] == "frame" and r["dir"] == "in"]
    assert inbound[0]["message"]["type"] == "hello"
    assert inbound[1]["raw"] == b"\xc1" and "message" not in inbound[1]


def test_a_torn_last_record_is_skipped_and_nothing_before_it_is_lost(tmp_path):
    path = tmp_path / "s.msgpack"
    log = SessionLog(path)
    for i in range(50):
        log({"kind": "game_event", "i": i, "data": "x" * i})
    log.frame("out", msgpack.packb({"type": "state", "state": "ready"}), True)
    log.close()
    whole = path.read_bytes()
    assert [r.get("i") for r in read_records(path)][:50] == list(range(50)) and torn_bytes(path) == 0
    path.write_bytes(whole[:-3])  # the process died three bytes short of the last record
    records = list(read_records(path))
    assert [r["i"] for r in records] == list(range(50))
    complete = sum(len(framed(msgpack.packb({"kind": "game_event", "i": i, "data": "x" * i}))) for i in range(50))
    assert torn_bytes(path) == len(whole) - 3 - complete > 0


def _raw_records(path) -> list[dict]:
    """Each record's own payload, as written (no steps put back)."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        out.append(msgpack.unpackb(data[pos + 9 : pos + 9 + length], raw=False))
        pos += 9 + length
    return out


def test_a_batch_of_steps_is_on_disk_once_in_its_frame_and_read_back_into_its_steps_record(tmp_path):
    path = tmp_path / "s.msgpack"
    log = SessionLog(path)
    steps = [{"episode": 0, "step": i, "reward": -0.01} for i in (1, 2)]
    message = {"type": "steps", "n": 4, "steps": steps}
    log.frame("in", msgpack.packb(message), True, message)
    log({"kind": "gap", "first": 2, "last": 3})
    log({"kind": "steps", "scene_id": "game", "steps": steps})
    log({"kind": "steps", "scene_id": "game", "steps": steps})  # not the frame's any more: written whole
    older = [{"episode": 0, "step": 0}]
    log({"kind": "steps", "scene_id": "game", "steps": older})  # as every steps record was written before
    log.close()
    raw = _raw_records(path)
    assert [("steps" in r, r.get("in_frame")) for r in raw if r["kind"] == "steps"] == [
        (False, True),
        (True, None),
        (True, None),
    ]
    records = [r for r in read_records(path) if r["kind"] == "steps"]
    assert [r["steps"] for r in records] == [steps, steps, older] and not any("in_frame" in r for r in records)


def test_a_steps_record_whose_frame_is_damaged_reads_as_an_empty_batch_and_says_so(tmp_path):
    path = tmp_path / "s.msgpack"
    log = SessionLog(path)
    message = {"type": "steps", "n": 1, "steps": [{"episode": 0, "step": 1}]}
    log.frame("in", msgpack.packb(message), True, message)
    log({"kind": "steps", "scene_id": "game", "steps": message["steps"]})
    log.close()
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF  # inside the frame record: its checksum no longer holds
    path.write_bytes(bytes(data))
    [record] = read_records(path)
    assert record["kind"] == "steps" and record["steps"] == [] and record["in_frame"] is True


def test_sessions_beyond_the_descriptor_pool_still_get_every_record(tmp_path):
    pool = FilePool(capacity=2)
    logs = [SessionLog(tmp_path / f"{i}.msgpack", pool) for i in range(5)]
    for round_ in range(3):
        for i, log in enumerate(logs):
            log({"kind": "n", "session": i, "round": round_})
            assert pool.open_files <= 2
    for log in logs:
        log.close()
    assert pool.open_files == 0
    for i in range(5):
        assert [r["round"] for r in read_records(tmp_path / f"{i}.msgpack")] == [0, 1, 2]


def test_the_study_snapshot_names_the_definition_and_every_package(app, config):
    [snapshot] = read_records(config.data_dir / "study.msgpack")
    assert snapshot["preflight_version"] and snapshot["experiment"]["name"] == "gridworld-example"
    runtime = snapshot["runtime"]
    assert runtime["pyodide_version"] == "314.0.7"
    wheels = sorted(os.listdir(config.wheelhouse))
    assert sorted(w for w in runtime["wheels"] if not w.startswith("preflight_local_")) == [
        w for w in wheels if w.endswith(".whl")
    ]
    assert runtime["packages"]["micropip"] == ["0.11.1"] and "preflight-local-gridworld-env" in runtime["packages"]
    env = snapshot["server_environment"]
    assert env["python"] and set(env["packages"]) == {"tornado", "transitions", "msgpack"}


@pytest.mark.gen_test
@pytest.mark.config(timeouts=Timeouts(grace=0.2))
async def test_sessions_that_end_leave_nothing_behind(ws_url, app, connect):
    study = app.settings["study"]
    clients = [await connect() for _ in range(20)]
    for client in clients:
        await client.send({"type": "hello"})
        await client.until_state("preflight")
    assert study.machine.attached == 20
    ours = weakref.WeakSet(study.sessions.values())  # earlier tests' objects are not this study's business
    await asyncio.gather(*(client.aclose() for client in clients))  # closed, not left for the gc.collect below
    for _ in range(200):  # parked for the grace period, then abandoned and closed
        if study.machine.attached == 0 and study.store.pool.open_files == 0:
            break
        await asyncio.sleep(0.02)
    assert study.machine.attached == 0 and study.store.pool.open_files == 0
    gc.collect()
    assert len(ours) == 0


@pytest.mark.gen_test(timeout=30)
async def test_each_session_names_its_experiment_and_another_experiment_on_the_same_data_is_warned_of(
    ws_url, config, tmp_path, caplog
):
    await walk(ws_url, participant_id="first")
    other = dataclasses.replace(config, experiment=Experiment("other-study", [StartScene(), EndScene()]))
    with caplog.at_level(logging.WARNING, logger="preflight"):
        Study(other)  # the server started again on the same data directory, with another study
    said = f"holds the data of experiment {config.experiment.name!r}; this server runs 'other-study'"
    assert said in caplog.text and "give each study its own --data-dir" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="preflight"):
        Study(other)  # and again with the same one: nothing to say
    assert "holds the data of experiment" not in caplog.text
    export(config.data_dir, "jsonl", tmp_path / "out")
    [row] = [json.loads(line) for line in (tmp_path / "out" / "participants.jsonl").read_text().splitlines()]
    assert row["participant_id"] == "first" and row["experiment"] == config.experiment.name
