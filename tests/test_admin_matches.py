"""`/admin` for multiplayer: the waiting room and the matches in progress, live, over the real app and real HTTP."""

from __future__ import annotations

import asyncio
import json
import textwrap

import pytest

from server.config import Config
from server.loader import load_study
from tests.support import READY, SCREENING
from tests.test_admin import api, fetch
from tests.test_match_data import ENV

STUDY = """
from server.agents import Human
from server.experiment import EndScene, Experiment, GymScene, StartScene
from server.multiplayer import Multiplayer

KEYS = {"ArrowLeft": 0, "ArrowUp": 1, "ArrowRight": 2}
duo = GymScene(
    "duo<i>&",
    environment="duo_env:make",
    agents={"p0": Human(keys=KEYS, default_action=1), "p1": Human(keys=KEYS, default_action=1)},
    fps=10,
    multiplayer=Multiplayer(input_delay=1, wait_timeout_s=60, reconnect_timeout_s=60),
)
experiment = Experiment("duo", [StartScene(), duo, EndScene(completion_code="DONE")])
"""


@pytest.fixture
def config(tmp_path) -> Config:
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "duo_env.py").write_text(ENV)
    (folder / "study.py").write_text(textwrap.dedent(STUDY))
    source = load_study(str(folder / "study.py"))
    return Config(experiment=source.experiment, experiment_file=source.file, data_dir=tmp_path / "data")


async def waiting_client(connect, name: str):
    client = await connect()
    for message in ({"type": "hello", "participant_id": name}, SCREENING, READY, {"type": "advance"}):
        await client.send(message)
    await client.until_state("waiting")
    return client


async def until(port: int, token: str, path: str, accept, what: str) -> dict:
    for _ in range(100):
        now = await api(port, token, path)
        if accept(now):
            return now
        await asyncio.sleep(0.05)
    raise AssertionError(f"/admin/api/{path} never showed {what}: {now}")


@pytest.mark.gen_test(timeout=30)
async def test_the_waiting_room_and_matches_in_progress_are_shown_live(http_server, http_port, connect, config):
    token = config.admin_token
    first, second = await waiting_client(connect, "alice"), await waiting_client(connect, "bob")
    announced = [await client.until_type("match") for client in (first, second)]
    third = await waiting_client(connect, "carol")
    counts = await until(http_port, token, "counts", lambda c: c["matches"]["waiting"] == 1, "carol waiting")
    assert counts["matches"]["states"] == {"forming": 0, "starting": 1, "playing": 0, "paused": 0}
    lobby = await api(http_port, token, "lobby")
    [waiter] = lobby["waiting"]
    assert waiter["participant_id"] == "carol" and waiter["scene_id"] == "duo<i>&" and waiter["needed"] == 2
    [match] = lobby["matches"]
    assert match["players"] == {"p0": "alice", "p1": "bob"} and match["state"] == "starting" and match["frame"] == 0
    assert match["match_id"] == announced[0]["match_id"] == announced[1]["match_id"]

    for client in (first, second):
        await client.send({"type": "match_ready", "match_id": match["match_id"]})
    await until(http_port, token, "lobby", lambda m: m["matches"][0]["frame"] >= 3, "frames closing")
    second.close()
    lobby = await until(http_port, token, "lobby", lambda m: m["matches"][0]["absent"] == ["p1"], "bob absent")
    assert lobby["matches"][0]["state"] == "paused"
    counts = await api(http_port, token, "counts")
    assert counts["matches"]["states"]["paused"] == 1 and counts["matches"]["ended"]["completed"] == 0

    page = await fetch(http_port, "/admin", token)
    assert page.code == 200 and b"Matches in progress" in page.body and b'data-state="paused"' in page.body
    events = []

    def on_chunk(chunk: bytes) -> None:
        events.extend(json.loads(e.removeprefix(b"data: ")) for e in chunk.split(b"\n\n") if e.strip())

    stream = fetch(http_port, "/admin/api/events", token, streaming_callback=on_chunk, request_timeout=5)
    for _ in range(100):
        if events:
            break
        await asyncio.sleep(0.05)
    assert events[0]["lobby"]["matches"][0]["absent"] == ["p1"]
    assert events[0]["lobby"]["waiting"][0]["participant_id"] == "carol"
    stream.cancel()

    sessions = await api(http_port, token, "sessions")
    alice = next(s["session_id"] for s in sessions if s["participant_id"] == "alice")
    detail = await fetch(http_port, f"/admin/sessions/{alice}", token)
    assert match["match_id"].encode() in detail.body and b"duo&lt;i&gt;&amp;" in detail.body
    assert b"duo<i>" not in detail.body
    third.close()
