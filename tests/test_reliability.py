"""Dropped connections, second tabs, returning participants and hostile frames, over real sockets."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
from tornado.httpclient import HTTPClientError

from client.harness import crash_and_restart, start_server
from client.participant import DESKTOP_CHROMIUM, ProtocolClient, walk
from server.session import Timeouts
from server.store import DataStore, read_records

READY = {"type": "preload", "status": "ready"}


async def to_ready(connect, **hello):
    client = await connect()
    await client.send({"type": "hello", **hello})
    config = await client.until_type("experiment_config")
    await client.send({"type": "screening", "facts": DESKTOP_CHROMIUM})
    await client.send(READY)
    await client.until_state("ready")
    return client, config["session_token"]


async def closed(client) -> None:
    """Hang up and give the server the moment it needs to notice."""
    client.close()
    for _ in range(100):
        await asyncio.sleep(0.01)


@pytest.mark.gen_test
async def test_a_participant_who_drops_resumes_the_same_state_scene_and_order(connect, app):
    client, token = await to_ready(connect)
    await client.send({"type": "advance"})
    scene = await client.until_type("activate_scene")
    await client.until_state("ready")
    study = app.settings["study"]
    [session] = study.sessions.values()
    order = [p.instance_id for p in session.plan]
    await closed(client)
    assert session.state == "disconnected"

    back = await connect()
    await back.send({"type": "hello", "resume_token": token, "last_seq": client.last_seq})
    state = await back.until_state("ready")
    assert state["scene_id"] == scene["scene_id"] == "instructions"
    assert [p.instance_id for p in session.plan] == order and session.state == "ready"
    await back.send({"type": "advance"})
    assert (await back.until_type("activate_scene"))["scene_type"] == "game"


@pytest.mark.gen_test
async def test_messages_missed_while_away_are_resent_with_their_numbers(connect):
    client, token = await to_ready(connect)
    await client.send({"type": "advance"})
    await client.until_state("ready")
    seen = client.last_seq
    await closed(client)

    back = await connect()
    await back.send({"type": "hello", "resume_token": token, "last_seq": 2})
    resent = await back.recv_until(lambda m: m.get("seq") == seen)
    assert [m["seq"] for m in resent] == list(range(3, seen + 1))


@pytest.mark.gen_test
async def test_a_reloaded_page_is_sent_its_config_scene_and_state_again(connect):
    client, token = await to_ready(connect)
    await client.ack()
    await closed(client)
    back = await connect()
    await back.send({"type": "hello", "resume_token": token, "last_seq": 0})
    config, scene, state = await back.recv(), await back.recv(), await back.recv()
    assert (config["type"], scene["type"], state["type"]) == ("experiment_config", "activate_scene", "state")
    assert config["session_token"] == token and scene["scene_id"] == "start" and state["state"] == "ready"


@pytest.mark.gen_test
@pytest.mark.config(timeouts=Timeouts(grace=0.2))
async def test_after_the_grace_period_the_session_is_abandoned_and_recorded(connect, config):
    client, token = await to_ready(connect, participant_id="leaver")
    await closed(client)
    await asyncio.sleep(0.4)
    back = await connect()
    await back.send({"type": "hello", "resume_token": token})
    assert (await back.recv())["code"] == "bad_token"
    [log] = (config.data_dir / "sessions").glob("*.msgpack")
    assert list(read_records(log))[-1]["outcome"] == "abandoned"
    await back.send({"type": "hello", "participant_id": "leaver"})
    assert (await back.recv())["type"] == "experiment_config"


@pytest.mark.gen_test
async def test_a_second_tab_with_the_token_takes_over_and_the_first_is_closed(connect, app):
    first, token = await to_ready(connect)
    second = await connect()
    await second.send({"type": "hello", "resume_token": token, "last_seq": first.last_seq})
    assert (await second.until_state("ready"))["may_advance"] is True
    assert await first.recv() is None
    assert first.conn.close_code == 4001
    await second.send({"type": "advance"})
    assert (await second.until_type("activate_scene"))["scene_id"] == "instructions"
    assert len(app.settings["study"].links) == 1


@pytest.mark.gen_test
async def test_a_participant_id_cannot_start_twice(connect, ws_url):
    assert (await walk(ws_url, participant_id="done-1"))["outcome"] == "completed"
    again = await connect()
    await again.send({"type": "hello", "params": {"PROLIFIC_PID": "done-1"}})
    refused = await again.recv()
    assert refused["code"] == "already_participated" and "completed" not in refused["message"]  # no outcome told

    _busy, _ = await to_ready(connect, participant_id="busy-1")
    other = await connect()
    await other.send({"type": "hello", "participant_id": "busy-1"})
    assert (await other.recv())["code"] == "already_participated"


async def excluded_then_back(connect, participant_id: str) -> dict:
    client = await connect(user_agent="Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Mobile/15E148 Safari/604.1")
    await client.send({"type": "hello", "participant_id": participant_id})
    await client.send({"type": "screening", "facts": {**DESKTOP_CHROMIUM, "touch": True, "max_touch_points": 5}})
    await client.send(READY)
    assert (await client.until_state("excluded"))["reason"]
    await closed(client)
    again = await connect()
    await again.send({"type": "hello", "participant_id": participant_id})
    return await again.recv()


@pytest.mark.gen_test
async def test_excluded_participants_may_try_again_by_default(connect):
    assert (await excluded_then_back(connect, "phone-1"))["type"] == "experiment_config"


@pytest.mark.gen_test
@pytest.mark.config(lock_ids=("completed", "excluded"))
async def test_excluded_participants_are_locked_out_when_the_study_says_so(connect):
    refused = await excluded_then_back(connect, "phone-2")
    assert refused["code"] == "already_participated" and "excluded" not in refused["message"]


@pytest.mark.gen_test
@pytest.mark.config(lock_ids=())
async def test_with_no_locking_outcome_a_completed_participant_may_start_again(connect, ws_url):
    assert (await walk(ws_url, participant_id="again-1"))["outcome"] == "completed"
    again = await connect()
    await again.send({"type": "hello", "participant_id": "again-1"})
    assert (await again.recv())["type"] == "experiment_config"


@pytest.mark.gen_test
@pytest.mark.config(messages_per_second=10.0)
async def test_a_flood_is_rate_limited_then_closed_and_others_are_unaffected(connect, ws_url):
    client, _ = await to_ready(connect)
    # all 60 written in one burst: sent one by one, a loaded machine can space them out below the limit
    await asyncio.gather(*(client.send({"type": "game_event"}) for _ in range(60)))
    codes = []
    while (reply := await client.recv()) is not None:
        codes.append(reply["code"])
    assert "rate_limited" in codes and set(codes) <= {"rate_limited", "not_allowed"}
    assert client.conn.close_code == 1008
    assert (await walk(ws_url))["outcome"] == "completed"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "payload, problem",
    [
        ({"data": [[[[[[[[[[1]]]]]]]]]]}, "nested deeper"),
        ({"data": msgpack.ExtType(5, b"x")}, "plain data"),
        ({"data": b"raw bytes"}, "plain data"),
        ({"data": list(range(5000))}, "more than"),
    ],
)
async def test_game_data_must_be_plain_and_bounded(connect, payload, problem):
    client, _ = await to_ready(connect)
    await client.send({"type": "advance"})
    await client.send({"type": "advance"})
    await client.until_state("in_game")
    await client.send_raw(msgpack.packb({"type": "game_event", **payload}, use_bin_type=True))
    refused = await client.recv()
    assert refused["code"] == "bad_message" and problem in refused["message"] and refused["state"] == "in_game"
    await client.send({"type": "game_event", "step": 1, "data": {"ok": [1, 2.5, "x", None, True]}})
    await client.send({"type": "game_over"})
    assert (await client.until_state("ready"))["may_advance"] is True


@pytest.mark.gen_test
@pytest.mark.config(allowed_origins=("https://study.example.org",))
async def test_only_allowed_origins_may_open_a_socket(connect, ws_url):
    with pytest.raises(HTTPClientError) as refused:
        await connect(headers={"Origin": "https://evil.example.com"})
    assert refused.value.code == 403
    allowed = await connect(headers={"Origin": "https://study.example.org"})
    await allowed.send({"type": "hello"})
    assert (await allowed.recv())["type"] == "experiment_config"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "path",
    [
        "/client/../server/app.py",
        "/client/%2e%2e/setup.cfg",
        "/wheels/..%2f..%2fsetup.cfg",
        "/pyodide/314.0.7/../../package.json",
        "/vendor/msgpack/../../../README.md",
    ],
)
async def test_static_routes_do_not_leave_their_directories(http_client, http_port, path):
    with pytest.raises(HTTPClientError) as refused:
        await http_client.fetch(f"http://127.0.0.1:{http_port}{path}")
    assert refused.value.code in (403, 404)


@pytest.mark.gen_test
async def test_tokens_are_unguessable_and_never_written_to_disk(connect, config):
    tokens = []
    for n in range(3):
        _, token = await to_ready(connect, participant_id=f"tok-{n}")
        tokens.append(token)
    assert len(set(tokens)) == 3 and all(len(t) >= 32 for t in tokens)
    on_disk = b"".join(p.read_bytes() for p in config.data_dir.rglob("*") if p.is_file())
    assert not any(t.encode() in on_disk for t in tokens)


def test_after_kill_9_and_a_restart_participants_resume_where_they_were(tmp_path):
    """The server dies mid-study; each participant reconnects to the new process with their token."""
    data = tmp_path / "data"
    proc, url = start_server(data)
    ws = url.replace("http", "ws") + "ws"

    async def story():
        nonlocal proc
        ready = await ProtocolClient.connect(ws)
        await ready.send({"type": "hello", "participant_id": "kept-1"})
        token = (await ready.until_type("experiment_config"))["session_token"]
        await ready.send({"type": "screening", "facts": DESKTOP_CHROMIUM})
        await ready.send(READY)
        await ready.until_state("ready")
        await ready.send({"type": "advance"})
        scene = await ready.until_type("activate_scene")
        await ready.until_state("ready")
        assert (await walk(ws, participant_id="done-2"))["outcome"] == "completed"

        proc = crash_and_restart(proc, data, url)
        assert await ready.recv() is None
        await ready.aclose()

        back = await ProtocolClient.connect(ws)
        await back.send({"type": "hello", "resume_token": token, "last_seq": ready.last_seq})
        messages = await back.recv_until(lambda m: m["type"] == "state")
        assert [m["type"] for m in messages] == ["experiment_config", "activate_scene", "state"]
        assert messages[1]["scene_id"] == scene["scene_id"] == "instructions"
        assert messages[2]["state"] == "ready" and messages[2]["may_advance"] is True
        await back.send({"type": "advance"})
        assert (await back.until_type("activate_scene"))["scene_type"] == "game"
        await back.aclose()

        again = await ProtocolClient.connect(ws)
        await again.send({"type": "hello", "participant_id": "done-2"})
        assert (await again.recv())["code"] == "already_participated"
        await again.aclose()

    try:
        asyncio.run(story())
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.config(timeouts=Timeouts(grace=3.0))
async def test_participants_dropped_at_every_moment_finish_with_every_record(ws_url, config):
    """One participant per message of the walk is cut off right there and comes back; nothing goes missing."""
    ends = await asyncio.gather(
        *(walk(ws_url, participant_id=f"flaky-{n}", drop_after=n, steps=3) for n in range(2, 13))
    )
    assert [e["outcome"] for e in ends] == ["completed"] * 11
    assert all(e["completion_code"] == "PREFLIGHT-EXAMPLE" for e in ends)
    logs = list((config.data_dir / "sessions").glob("*.msgpack"))
    for _ in range(200):  # finished sessions stay resumable for the grace period, then are closed
        if all(list(read_records(log))[-1]["kind"] == "closed" for log in logs):
            break
        await asyncio.sleep(0.1)
    assert len(logs) == 11
    for log in logs:
        records = list(read_records(log))
        steps = [s["step"] for r in records if r["kind"] == "steps" for s in r["steps"]]
        assert steps == [1, 2, 3], log
        assert records[-1]["kind"] == "closed" and records[-1]["outcome"] == "completed"
        assert [r["kind"] for r in records].count("resumed") == 1


def test_the_snapshot_journal_keeps_each_sessions_last_whole_snapshot(tmp_path):
    store = DataStore(tmp_path)
    for saved in ({"session_id": "a", "seq": 1}, {"session_id": "b", "seq": 1}, {"session_id": "a", "seq": 2}):
        store.save_snapshot(saved)
    with open(store.journal, "ab") as f:  # killed while writing a's third snapshot
        f.write(msgpack.packb({"session_id": "a", "seq": 3, "facts": "x" * 100})[:20])
    assert sorted(DataStore(tmp_path).snapshots(), key=lambda s: s["session_id"]) == [
        {"session_id": "a", "seq": 2},
        {"session_id": "b", "seq": 1},
    ]
    assert list(read_records(store.journal)) == [{"session_id": "a", "seq": 2}, {"session_id": "b", "seq": 1}]
