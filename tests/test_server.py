"""Participants over a real WebSocket against the real app."""

from __future__ import annotations

import asyncio
import json

import msgpack
import pytest
import tornado.web
import tornado.websocket
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from client.harness import masked_frame, read_frame, records_of, upgrade
from client.participant import DESKTOP_CHROMIUM, walk
from server.app import MAX_HELD, binary_frame
from server.experiment import EndScene, Experiment, StartScene
from server.page_module import page_constants
from server.protocol import Close
from server.session import Timeouts
from server.store import read_records
from statemachine import FINAL_STATES, OUTCOMES, state_names

SCREENING = {"type": "screening", "facts": DESKTOP_CHROMIUM}
LOADING = {"type": "preload", "status": "loading", "stage": "runtime", "elapsed_ms": 10}


async def start(connect, **hello):
    client = await connect()
    await client.send({"type": "hello", **hello})
    config = await client.until_type("experiment_config")
    await client.until_state("preflight")
    return client, config


@pytest.mark.gen_test
async def test_full_walk_reaches_the_completion_code(ws_url, config):
    path = []
    end = await walk(ws_url, on_state=path.append, participant_id="walker-1")
    assert end["outcome"] == "completed"
    assert end["completion_code"] == "PREFLIGHT-EXAMPLE"
    assert [s for i, s in enumerate(path) if i == 0 or path[i - 1] != s] == [
        "preflight",
        "ready",
        "in_game",
        "ready",
        "completed",
    ]
    [log] = (config.data_dir / "sessions").glob("*.msgpack")
    records = list(read_records(log))
    kinds = {r["kind"] for r in records}
    assert {"begin", "screening", "preload", "scene", "transition", "steps", "game_over"} <= kinds
    # the RTT ping leaves when the socket opens: its pong is back before the facts are judged
    [screening] = [r for r in records if r["kind"] == "screening"]
    assert screening["rtt_ms"] is not None and screening["verdict"] == []


@pytest.mark.gen_test
async def test_hello_gets_the_experiment_config_then_the_start_scene(connect):
    client = await connect()
    await client.send({"type": "hello", "params": {"PROLIFIC_PID": "abc123", "STUDY_ID": "s1"}})
    config, scene, state = await client.recv(), await client.recv(), await client.recv()
    assert config["type"] == "experiment_config" and config["participant_id"] == "abc123"
    runtime = config["pyodide_config"]
    assert runtime["needs_pyodide"] is True and runtime["packages_to_install"] == ["preflight-local-gridworld-env"]
    assert runtime["pyodide_url"] == "/pyodide/314.0.7/" and runtime["index_url"] == "/simple/{package_name}/"
    assert runtime["lock"]["packages"]["micropip"]["file_name"] == "micropip-0.11.1-py3-none-any.whl"
    assert len(config["session_token"]) >= 32
    assert "final_states" not in config  # the page imports them from /client/lifecycle.js
    assert (scene["type"], scene["scene_type"]) == ("activate_scene", "start")
    assert state == {
        "type": "state",
        "state": "preflight",
        "may_advance": False,
        "scene_id": "start",
        "regions": {"screening": "checking", "preloading": "idle"},
        "awaiting": ["screening", "preload"],
        "seq": 3,
    }
    assert [config["seq"], scene["seq"]] == [1, 2]


@pytest.mark.gen_test
async def test_advance_while_loading_is_gated_and_changes_nothing(connect):
    client, _ = await start(connect)
    await client.send({"type": "screening", "facts": DESKTOP_CHROMIUM})
    await client.send(LOADING)
    before = await client.until_state("preflight")
    while before["regions"]["preloading"] != "loading":
        before = await client.until_state("preflight")
    await client.send({"type": "advance"})
    refused = await client.recv()
    assert refused["type"] == "error" and refused["code"] == "gated" and refused["state"] == "preflight"
    await client.send({"type": "preload", "status": "ready"})
    after = await client.until_state("ready")
    assert after["may_advance"] is True


@pytest.mark.gen_test
async def test_a_game_cannot_be_entered_before_the_runtime_is_ready(connect):
    client, _ = await start(connect)
    await client.send({"type": "screening", "facts": DESKTOP_CHROMIUM})
    await client.until_state("preflight")
    for forged in ({"type": "game_event", "step": 0}, {"type": "game_over"}, {"type": "advance"}):
        await client.send(forged)
        reply = await client.recv()
        assert reply["type"] == "error" and reply["state"] == "preflight"
        assert reply["code"] == ("gated" if forged["type"] == "advance" else "not_allowed")


@pytest.mark.gen_test
async def test_a_failed_screening_excludes_with_the_reason(connect):
    client = await connect(user_agent="Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Mobile/15E148 Safari/604.1")
    await client.send({"type": "hello"})
    await client.until_state("preflight")
    await client.send({"type": "screening", "facts": {**DESKTOP_CHROMIUM, "screen_width": 390, "touch": True}})
    excluded = await client.until_state("excluded")
    assert excluded["reason"] == "mobile,screen_too_small"
    await client.send({"type": "advance"})
    assert (await client.recv())["code"] == "not_allowed"


async def pipelined(port: int, participant_id: str, *more: dict) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client written by hand that sends `hello`, its facts and `more` in one write as soon as the socket opens,
    and answers no ping unless told to."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade(port, DESKTOP_CHROMIUM["user_agent"]))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    messages = [{"type": "hello", "participant_id": participant_id}, SCREENING, *more]
    writer.write(b"".join(masked_frame(msgpack.packb(m)) for m in messages))
    return reader, writer


@pytest.mark.gen_test(timeout=30)
async def test_facts_sent_before_the_pong_could_return_are_judged_with_the_round_trip(http_server, http_port, config):
    """A client that writes `hello` and its facts at once, before the server's ping has reached it, is judged with
    its round trip: the facts wait for the pong (held back 0.3 s here), where they were judged `rtt_unmeasured`."""
    assert config.experiment.screening.max_rtt_ms == 1000
    reader, writer = await pipelined(http_port, "pipelined")
    try:
        opcode, ping = await asyncio.wait_for(read_frame(reader), 10)
        assert opcode == 0x9  # the server's ping, sent when the socket opened
        await asyncio.sleep(0.3)
        writer.write(masked_frame(ping, opcode=0xA))
        state = {"state": "preflight", "regions": {"screening": "checking"}}
        while state["state"] == "preflight" and state["regions"]["screening"] == "checking":
            opcode, payload = await asyncio.wait_for(read_frame(reader), 10)
            message = msgpack.unpackb(payload)
            state = message if message["type"] == "state" else state
        assert state["state"] == "preflight" and state["regions"]["screening"] == "passed", state
    finally:
        writer.close()
        await writer.wait_closed()
    [screening] = [r for r in records_of(config.data_dir, "pipelined") if r["kind"] == "screening"]
    assert screening["verdict"] == [] and 300 <= screening["rtt_ms"] < 1000


@pytest.mark.gen_test(timeout=30)
async def test_facts_wait_for_a_pong_that_never_comes_only_so_long_and_a_flood_meanwhile_is_closed(
    http_server, http_port, config, monkeypatch
):
    monkeypatch.setattr("server.app.RTT_WAIT_S", 0.2)
    reader, writer = await pipelined(http_port, "silent")
    try:
        state: dict = {"state": "preflight"}
        while state["state"] == "preflight":  # after the ping (never answered), the replies to hello, then states
            opcode, payload = await asyncio.wait_for(read_frame(reader), 10)
            message = msgpack.unpackb(payload) if opcode == 0x2 else {}
            state = message if message.get("type") == "state" else state
        assert state["state"] == "excluded" and state["reason"] == "rtt_unmeasured"
    finally:
        writer.close()
        await writer.wait_closed()
    flood = [LOADING] * MAX_HELD
    reader, writer = await pipelined(http_port, "flooding", *flood)
    try:
        while (frame := await asyncio.wait_for(read_frame(reader), 10))[0] != 0x8:
            pass
        assert int.from_bytes(frame[1][:2], "big") == Close.POLICY and b"before the round trip" in frame[1]
    finally:
        writer.close()
        await writer.wait_closed()
    for _ in range(100):  # the server handles what it held once the socket has closed (the session parks then)
        records = records_of(config.data_dir, "flooding")
        if any(r["kind"] == "screening" for r in records):
            break
        await asyncio.sleep(0.05)
    [screening] = [r for r in records if r["kind"] == "screening"]
    held = [r for r in records if r["kind"] == "frame" and r["dir"] == "in" and r["message"]["type"] == "preload"]
    assert screening["rtt_ms"] is None and len(held) == MAX_HELD - 1  # all but the one the close refused


@pytest.mark.gen_test
@pytest.mark.config(timeouts=Timeouts(screening=30, preload=0.2))
async def test_silent_preload_times_out_into_error_and_the_gate_opens(connect):
    client, _ = await start(connect)
    await client.send({"type": "screening", "facts": DESKTOP_CHROMIUM})
    await client.send(LOADING)
    timed_out = await client.until_state("ready")
    assert timed_out["may_advance"] is True


@pytest.mark.gen_test
@pytest.mark.config(timeouts=Timeouts(screening=0.2, preload=30))
async def test_silent_screening_times_out_into_exclusion(connect):
    client, _ = await start(connect)
    await client.send({"type": "preload", "status": "ready"})
    excluded = await client.until_state("excluded")
    assert excluded["reason"] == "timeout"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "frame, code",
    [
        (b"\xc1", "bad_message"),
        (msgpack.packb([1, 2, 3]), "bad_message"),
        (msgpack.packb({"kind": "hello"}), "bad_message"),
        (msgpack.packb({"type": 7}), "bad_message"),
        (msgpack.packb({"type": "hello", "participant_id": "../../etc"}), "bad_message"),
        (msgpack.packb({"type": "screening", "facts": {"screen_width": "wide"}}), "bad_message"),
        (msgpack.packb({"type": "preload", "status": "done"}), "bad_message"),
        (msgpack.packb({"type": "teleport"}), "unknown_type"),
        (msgpack.packb({"type": "hello", "resume_token": "x" * 32}), "bad_token"),
        ('{"type": "hello"}', "bad_message"),
    ],
)
async def test_bad_frames_are_refused_and_the_server_keeps_serving(connect, ws_url, frame, code):
    client = await connect()
    await client.send_raw(frame)
    refused = await client.recv()
    assert refused["type"] == "error" and refused["code"] == code and refused["state"] == "connected"
    assert "Traceback" not in refused["message"]
    await client.send({"type": "hello"})
    assert (await client.recv())["type"] == "experiment_config"
    assert (await walk(ws_url))["outcome"] == "completed"


@pytest.mark.gen_test
async def test_persistent_abuse_closes_the_connection_with_a_reason(connect, config):
    client = await connect()
    for _ in range(config.max_refusals):
        await client.send_raw(b"\xc1")
    replies = [await client.recv() for _ in range(config.max_refusals)]
    assert all(r["code"] == "bad_message" for r in replies)
    assert await client.recv() is None
    assert client.conn.close_code == 1008 and "refused" in client.conn.close_reason


@pytest.mark.gen_test
async def test_an_oversized_frame_is_refused_and_a_huge_one_closes_with_1009(connect, config):
    client = await connect()
    await client.send({"type": "game_event", "blob": "x" * (config.max_message_bytes + 1)})
    refused = await client.recv()
    assert refused["code"] == "too_large" and refused["state"] == "connected"
    await client.send({"type": "game_event", "blob": "x" * (4 * config.max_message_bytes + 1)})
    assert await client.recv() is None
    assert client.conn.close_code == 1009


@pytest.mark.gen_test
@pytest.mark.config(experiment=Experiment("plain", [StartScene(), EndScene(completion_code="P")]))
async def test_an_experiment_without_python_skips_the_preload(connect):
    client = await connect()
    await client.send({"type": "hello"})
    state = await client.until_state("preflight")
    assert state["regions"]["preloading"] == "skipped"
    await client.send({"type": "screening", "facts": DESKTOP_CHROMIUM})
    await client.until_state("ready")
    await client.send({"type": "advance"})
    end = await client.until_type("activate_scene")
    assert end["scene_type"] == "end" and end["completion_code"] == "P"
    await client.until_state("completed")


@pytest.mark.gen_test
async def test_the_page_imports_the_lifecycle_names_generated_from_the_table(http_server, http_port):
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(f"http://127.0.0.1:{http_port}/client/lifecycle.js")
    finally:
        client.close()
    assert response.headers["Content-Type"].startswith("text/javascript")
    constants = {
        line.split(" = ", 1)[0].removeprefix("export const "): json.loads(line.split(" = ", 1)[1].rstrip(";"))
        for line in response.body.decode().splitlines()
        if line.startswith("export const ")
    }
    assert constants == page_constants()
    assert constants["FINAL_STATES"] == sorted(FINAL_STATES) and constants["OUTCOMES"] == list(OUTCOMES)
    assert constants["CODE"]["GATED"] == "gated" and constants["CLOSE"]["TAKEN_OVER"] == 4001
    assert set(constants["WAITING"]) <= {name.rsplit(".", 1)[-1] for name in state_names()}


@pytest.mark.gen_test
@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
async def test_frames_written_together_arrive_whole_at_every_length_class(size):
    """The server frames its own replies (one write per event); Tornado's client must read each one back."""
    payloads = [bytes([i % 251]) * size for i in range(3)]

    class Burst(tornado.websocket.WebSocketHandler):
        def on_message(self, message):
            assert self.ws_connection is not None and self.ws_connection.stream is not None
            self.ws_connection.stream.write(b"".join(binary_frame(p) for p in payloads))

    sock, port = bind_unused_port()
    server = HTTPServer(tornado.web.Application([(r"/", Burst)]))
    server.add_sockets([sock])
    try:
        conn = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{port}/")
        await conn.write_message(b"go", binary=True)
        assert [await conn.read_message() for _ in payloads] == payloads
        conn.close()
    finally:
        server.stop()
