"""Bounded resources: each limit refuses with a clear code, and nothing else is disturbed."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys

import pytest

from client.harness import ROOT
from client.participant import DESKTOP_CHROMIUM
from server.store import read_records


async def closed_with(client) -> tuple[int | None, str | None]:
    assert await client.recv() is None
    return client.conn.close_code, client.conn.close_reason


async def raw_exchange(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send `data` on a plain socket and read the server's first answer: bytes, or b"" when it just closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), wait)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.gen_test
@pytest.mark.config(hello_timeout=0.2)
async def test_a_connection_that_never_says_hello_is_closed_with_4002(connect):
    client = await connect()
    assert await closed_with(client) == (4002, "no accepted hello within 0.2 s")


@pytest.mark.gen_test
@pytest.mark.config(hello_timeout=0.2)
async def test_a_connection_that_said_hello_is_not_closed_by_the_deadline(connect):
    client = await connect()
    await client.send({"type": "hello"})
    await client.until_type("experiment_config")
    await asyncio.sleep(0.4)
    await client.send({"type": "screening", "facts": DESKTOP_CHROMIUM})
    assert (await client.until_type("state"))["type"] == "state"


@pytest.mark.gen_test
@pytest.mark.config(max_connections_per_ip=3)
async def test_one_address_may_hold_only_so_many_connections(connect):
    held = [await connect() for _ in range(3)]
    extra = await connect()
    assert await closed_with(extra) == (4003, "too many connections from this address")
    held[0].close()
    await asyncio.sleep(0.2)
    again = await connect()
    await again.send({"type": "hello"})
    assert (await again.recv())["type"] == "experiment_config"


@pytest.mark.gen_test
@pytest.mark.config(sessions_per_ip_per_minute=2)
async def test_one_address_may_start_only_so_many_sessions_a_minute(connect):
    for _ in range(2):
        client = await connect()
        await client.send({"type": "hello"})
        assert (await client.recv())["type"] == "experiment_config"
    client = await connect()
    await client.send({"type": "hello"})
    refused = await client.recv()
    assert refused["code"] == "rate_limited" and "new sessions" in refused["message"]


@pytest.mark.gen_test
@pytest.mark.config(max_sessions=2)
async def test_a_full_server_refuses_new_sessions_but_resumes_old_ones(connect):
    tokens = []
    for _ in range(2):
        client = await connect()
        await client.send({"type": "hello"})
        tokens.append((await client.until_type("experiment_config"))["session_token"])
    client = await connect()
    await client.send({"type": "hello"})
    refused = await client.recv()
    assert refused["code"] == "server_full"
    back = await connect()
    await back.send({"type": "hello", "resume_token": tokens[0], "last_seq": 0})
    assert (await back.until_type("experiment_config"))["session_token"] == tokens[0]


@pytest.mark.gen_test(timeout=20)
@pytest.mark.config(max_session_bytes=4000)
async def test_research_data_past_the_quota_is_refused_with_a_trace(connect, config):
    client = await connect()
    await client.send({"type": "hello", "participant_id": "greedy-1"})
    await client.until_type("experiment_config")
    await client.send({"type": "screening", "facts": DESKTOP_CHROMIUM})
    await client.send_data({"type": "preload", "status": "ready"})
    await client.until_state("ready")
    for _ in range(2):
        await client.send({"type": "advance"})
        await client.until_type("activate_scene")
    await client.until_state("in_game")
    for _ in range(3):
        await client.send_data({"type": "game_event", "blob": "x" * 1500})
    refused = await client.until_type("error")
    assert refused["code"] == "quota_exceeded"
    await client.until_confirmed()  # a refused numbered message is confirmed: the page stops resending it
    client.close()
    await asyncio.sleep(0.2)
    records = [r for log in (config.data_dir / "sessions").glob("*.msgpack") for r in read_records(log)]
    assert [r["kind"] for r in records].count("game_event") == 2
    assert [(r["code"], r["type"]) for r in records if r["kind"] == "refused"] == [("quota_exceeded", "game_event")]


@pytest.mark.gen_test
async def test_a_long_user_agent_is_cut_before_it_is_stored(connect, config):
    client = await connect(user_agent="Mozilla/5.0 " + "A" * 20_000)
    await client.send({"type": "hello", "participant_id": "long-ua"})
    await client.until_type("experiment_config")
    client.close()
    await asyncio.sleep(0.1)
    begin = [r for log in (config.data_dir / "sessions").glob("*.msgpack") for r in read_records(log)]
    assert [len(r["user_agent"]) for r in begin if r["kind"] == "begin"] == [512]


@pytest.mark.gen_test(timeout=20)
@pytest.mark.config(messages_per_second=5.0, max_refusals=5)
async def test_a_ping_flood_is_rate_limited_and_closed(connect):
    client = await connect()
    await client.send({"type": "hello"})
    await client.until_type("experiment_config")
    for _ in range(100):
        client.conn.ping(b"x")
    code, _ = await asyncio.wait_for(drain_until_closed(client), 10)
    assert code == 1008


async def drain_until_closed(client) -> int | None:
    while await client.recv() is not None:
        pass
    return client.conn.close_code, client.conn.close_reason


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("path", ["/admin", "/ws", "/", "/client/app.js"])
async def test_a_huge_body_is_refused_before_it_is_read(http_server, http_port, path):
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {100 * 1024 * 1024}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    answer = await raw_exchange(http_port, head + b"x" * 1024)  # the other 100 MB never have to be sent
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:100]


@pytest.mark.gen_test(timeout=20)
@pytest.mark.config(idle_timeout=0.3)
async def test_a_slow_header_connection_is_closed(http_server, http_port):
    answer = await raw_exchange(http_port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    assert answer == b""


def test_the_server_raises_its_open_file_limit_toward_the_hard_one():
    import resource

    from server.limits import raise_descriptor_limit

    soft, hard = raise_descriptor_limit()
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert hard == resource.RLIM_INFINITY or soft <= hard
    socket.socket().close()


def test_accept_errors_for_want_of_descriptors_are_logged_once_and_accepting_resumes(tmp_path):
    """`python -m server` with 64 descriptors: a crowd past that gets one log line, not a traceback per loop turn."""
    import resource
    import subprocess
    import sys
    import time
    import urllib.request

    from client.harness import ROOT, free_port

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))  # the hard limit too, or the server raises it

    port = free_port()
    log = tmp_path / "server.log"
    flags = ["--port", str(port), "--data-dir", str(tmp_path / "data"), "--no-precompressed"]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", *flags],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=few_files,
        )
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while "Participant URL" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "Participant URL" in log.read_text(), log.read_text()
        for _ in range(150):  # more than the server has descriptors; the kernel queues the rest (backlog 128)
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.setblocking(False)
            held.append(sock)
        while "cannot accept" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2)  # several pauses and tries while the condition lasts
        during = log.read_text()
        for sock in held:
            sock.close()
        held.clear()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as response:
            assert response.status == 200  # accepting again once descriptors are free
        while "accepting connections again" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        after = log.read_text()
        assert proc.poll() is None
    finally:
        for sock in held:
            sock.close()
        proc.terminate()
        proc.wait(timeout=10)
    assert during.count("cannot accept connections (EMFILE") == 1, during[-3000:]
    assert "Traceback" not in during and "Exception in callback" not in during, during[-3000:]
    assert after.count("accepting connections again") == 1


def test_the_server_freezes_what_start_up_built_and_collects_cycles_less_often():
    """Run in a process of its own: the collector's settings are the whole interpreter's."""
    code = (
        "import gc; from server.limits import COLLECT_EVERY, settle_collector; settle_collector(); "
        "assert gc.get_threshold()[0] == COLLECT_EVERY > 700 and gc.get_freeze_count() > 1000, gc.get_threshold()"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
