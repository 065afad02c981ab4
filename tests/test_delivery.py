"""Numbered research data: stored once however often it is resent, gaps recorded, the count kept over a kill -9."""

from __future__ import annotations

import asyncio

import pytest

from client.harness import crash_and_restart, start_server
from client.participant import DESKTOP_CHROMIUM, ProtocolClient
from server.export import export
from server.store import read_records

READY = {"type": "preload", "status": "ready"}


def batch(*steps: int) -> dict:
    return {"type": "steps", "steps": [{"episode": 0, "step": s, "action": 1, "reward": 0.0} for s in steps]}


async def to_game(client: ProtocolClient, participant_id: str) -> str:
    await client.send({"type": "hello", "participant_id": participant_id})
    token = (await client.until_type("experiment_config"))["session_token"]
    await client.send({"type": "screening", "facts": DESKTOP_CHROMIUM})
    await client.send_data(READY)
    await client.until_state("ready")
    for _ in range(2):
        await client.send({"type": "advance"})
        await client.until_type("activate_scene")
    await client.until_state("in_game")
    return token


def steps_exported(data, tmp_path, participant_id: str) -> list[int]:
    import json

    export(data, "jsonl", tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "steps.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["participant_id"] == participant_id]


@pytest.mark.gen_test(timeout=20)
async def test_resent_research_data_is_stored_once_and_confirmed(connect, config, tmp_path):
    client = await connect()
    token = await to_game(client, "numbered-1")
    await client.send_data(batch(1, 2))
    await client.send_data(batch(3, 4))  # the connection drops before any `received` is read
    client.conn.stream.close()
    client.close()

    back = await connect()
    back.carry_over(client)
    await back.send({"type": "hello", "resume_token": token, "last_seq": back.last_seq})
    await back.resend()  # both batches again: the server has them already
    await back.send_data(batch(5))
    await back.until_confirmed()
    assert back.pending == {}
    assert steps_exported(config.data_dir, tmp_path, "numbered-1") == [1, 2, 3, 4, 5]


@pytest.mark.gen_test(timeout=20)
async def test_a_number_never_received_is_recorded_as_a_gap(connect, config):
    client = await connect()
    await to_game(client, "gappy-1")
    n = client.n
    await client.send({**batch(1), "n": n + 1})
    await client.send({**batch(4), "n": n + 4})  # n+2 and n+3 were lost for good (the page's bound overflowed)
    await client.send({**batch(4), "n": n + 4})  # a duplicate of the last one: dropped
    await client.send({"type": "ack", "seq": 0})
    for _ in range(50):
        await asyncio.sleep(0.02)
    records = [r for log in (config.data_dir / "sessions").glob("*.msgpack") for r in read_records(log)]
    gaps = [r for r in records if r["kind"] == "gap"]
    assert [(g["first"], g["last"], g["type"]) for g in gaps] == [(n + 2, n + 3, "steps")]
    assert [s["step"] for r in records if r["kind"] == "steps" for s in r["steps"]] == [1, 4]


@pytest.mark.gen_test
@pytest.mark.parametrize("n", [0, -1, True, 1.5, "1"])
async def test_a_bad_number_is_refused(connect, n):
    client = await connect()
    await to_game(client, f"badn-{abs(hash(repr(n))) % 10000}")
    await client.send({**batch(1), "n": n})
    error = await client.until_type("error")
    assert error["code"] == "bad_message" and "steps: n must be a positive integer" in error["message"]


async def killed_and_back(proc, data, url: str, client: ProtocolClient, token: str):
    """`kill -9` the server, start it again on the same data and port, and resume `client`'s session there."""
    proc = crash_and_restart(proc, data, url)
    client.close()
    back = await ProtocolClient.connect(url.replace("http", "ws") + "ws")
    back.carry_over(client)
    await back.send({"type": "hello", "resume_token": token, "last_seq": back.last_seq})
    return proc, back


def test_after_kill_9_resent_steps_are_stored_once(tmp_path):
    """Steps the server logged just before a kill -9 but never confirmed come again; the restarted server knows them."""
    data = tmp_path / "data"
    proc, url = start_server(data)
    ws = url.replace("http", "ws") + "ws"

    async def story():
        nonlocal proc
        client = await ProtocolClient.connect(ws)
        token = await to_game(client, "killed-1")
        await client.send_data(batch(1, 2))
        await client.until_confirmed()
        client.n += 1
        client.pending[client.n] = {**batch(3), "n": client.n}  # stored by the server; its confirmation dies
        await client.send(client.pending[client.n])
        for _ in range(20):
            if any(r.get("kind") == "steps" and r["steps"][0]["step"] == 3 for r in all_records(data)):
                break
            await asyncio.sleep(0.05)
        proc, back = await killed_and_back(proc, data, url, client, token)
        await back.resend()
        await back.send_data(batch(4))
        await back.until_confirmed()
        back.close()

    try:
        asyncio.run(story())
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert steps_exported(data, tmp_path, "killed-1") == [1, 2, 3, 4]


def test_after_kill_9_the_game_in_progress_still_counts_every_step_it_received(tmp_path):
    """A batch of steps saves no snapshot of its own: the restarted server counts the game's steps from the log."""
    data = tmp_path / "data"
    proc, url = start_server(data)
    ws = url.replace("http", "ws") + "ws"

    async def story():
        nonlocal proc
        client = await ProtocolClient.connect(ws)
        token = await to_game(client, "killed-2")
        await client.send_data(batch(1, 2))
        await client.send_data(batch(3))
        await client.until_confirmed()
        proc, back = await killed_and_back(proc, data, url, client, token)
        await back.until_state("in_game")
        await back.send_data(batch(4))
        await back.send_data({"type": "game_over", "steps": 4})
        await back.until_confirmed()
        back.close()

    try:
        asyncio.run(story())
    finally:
        proc.kill()
        proc.wait(timeout=10)
    [over] = [r for r in all_records(data) if r.get("kind") == "game_over"]
    assert over["check"] == {"reported_steps": 4, "received_steps": 4, "complete": True}


def all_records(data) -> list[dict]:
    return [r for log in (data / "sessions").glob("*.msgpack") for r in read_records(log)]


def crash_bench(*flags: str) -> dict:
    """`python -m bench.crash` at a small scale: its report, whatever its exit code."""
    import json
    import subprocess
    import sys

    from client.harness import ROOT

    small = ["--games", "10", "--seconds", "4", "--kill-at", "1", "--down", "0.5"]
    run = subprocess.run(
        [sys.executable, "-m", "bench.crash", *small, *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.stdout.strip().startswith("{"), run.stderr[-2000:]
    return json.loads(run.stdout)


def test_a_kill_9_during_real_time_games_loses_and_duplicates_no_step():
    """Games go on while the server is down; each player resumes and resends what was unconfirmed."""
    report = crash_bench()
    assert report["completed_by_players"] == 10 and report["players_reconnected"] == 10
    assert report["steps_played"] == 10 * 80 == report["steps_exported"]
    assert report["steps_lost"] == 0 and report["steps_duplicated"] == 0 and report["gap_records"] == 0
    assert report["outcomes_exported"] == {"completed": 10}


def test_the_crash_audit_sees_the_loss_when_unconfirmed_data_is_not_resent():
    """The same run with the page's old behaviour: the audit must see the steps played while the server was down."""
    report = crash_bench("--no-resend")
    assert report["steps_lost"] > 0 and report["gap_records"] > 0
