"""Arbitrary frames and message sequences against a real `python -m server`: it keeps serving, every reply is a
valid message, and nothing reaches a game without passing screening and the gate."""

from __future__ import annotations

import asyncio
import uuid

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.harness import start_server, stop_server
from client.participant import DESKTOP_CHROMIUM, ProtocolClient
from server.protocol import PRELOAD_STATUSES, SERVER_TYPES, Code
from server.store import read_records
from statemachine import STATES

TOP_STATES = {s if isinstance(s, str) else s["name"] for s in STATES}

plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
wild = st.recursive(
    plain | st.binary(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-(2**63), 2**63 - 1), inner, max_size=4)
    ),
    max_leaves=12,
)
ids = st.sampled_from(["p1", "p2", "p3", "../x", "", "a" * 80])
messages = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("hello")},
        optional={
            "participant_id": ids,
            "resume_token": st.text(max_size=40),
            "last_seq": st.integers(-1, 50),
            "params": wild,
        },
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("screening"),
            "facts": st.just(DESKTOP_CHROMIUM) | st.dictionaries(st.text(max_size=12), plain, max_size=5),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.just("preload"), "status": st.sampled_from(PRELOAD_STATUSES) | st.text(max_size=6)},
        optional={"stage": st.text(max_size=10), "elapsed_ms": plain},
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["advance", "game_over", "ack"])}, optional={"seq": plain}),
    st.fixed_dictionaries({"type": st.just("game_event")}, optional={"data": wild}),
    st.dictionaries(st.text(max_size=8), wild, max_size=4).map(lambda m: {"type": "teleport", **m}),
)


frames = st.one_of(
    messages.map(lambda m: msgpack.packb(m, use_bin_type=True)),
    st.binary(max_size=64),
    wild.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.text(max_size=32),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz") / "data"
    proc, url = start_server(data, "--rate-limit", "100000", "--screening-timeout", "30")
    yield url.replace("http", "ws") + "ws", data
    stop_server(proc)


def check_reply(reply: dict) -> None:
    assert isinstance(reply, dict) and reply["type"] in SERVER_TYPES, reply
    if reply["type"] == "error":
        assert reply["code"] in {c.value for c in Code} and isinstance(reply["message"], str)
        assert "Traceback" not in reply["message"]
    if reply["type"] == "state":
        assert reply["state"] in TOP_STATES and isinstance(reply["may_advance"], bool)


async def play(url: str, sequence: list[bytes | str]) -> list[dict]:
    """Send the frames, then a marker whose refusal is unmistakable; everything before it answers the sequence."""
    marker = f"end-{uuid.uuid4().hex}"
    client = await ProtocolClient.connect(url, timeout=5)
    replies: list[dict] = []
    try:
        for frame in sequence:
            await client.send_raw(frame)
        await client.send({"type": marker})
        while (reply := await client.recv()) is not None and marker not in reply.get("message", ""):
            check_reply(reply)
            replies.append(reply)
    finally:
        await hang_up(client)
    fresh = await ProtocolClient.connect(url, timeout=5)
    await fresh.send({"type": "hello"})
    assert (await fresh.recv())["type"] == "experiment_config"
    await hang_up(fresh)
    return replies


async def hang_up(client: ProtocolClient) -> None:
    """Close and wait for the server's close frame, so no socket outlives its event loop."""
    client.close()
    while await asyncio.wait_for(client.conn.read_message(), 5) is not None:
        pass


def gate_held(replies: list[dict]) -> None:
    """In the page's own view: in_game only after a `ready` the gate opened, never after an exclusion."""
    seen_ready = False
    for reply in replies:
        if reply["type"] != "state":
            continue
        assert not (reply["state"] == "in_game" and not seen_ready), replies
        seen_ready = seen_ready or reply["state"] == "ready"


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sequence=st.lists(frames, max_size=12))
def test_arbitrary_frames_never_break_the_server(server, sequence):
    url, _ = server
    gate_held(asyncio.run(play(url, sequence)))


WALK = [
    {"type": "hello"},
    {"type": "screening", "facts": DESKTOP_CHROMIUM},
    {"type": "preload", "status": "ready"},
    {"type": "advance"},
    {"type": "advance"},
    {"type": "game_event", "step": 1},
    {"type": "game_over"},
]


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from([True] * 6 + [False]), st.lists(messages, max_size=2)),
        min_size=len(WALK),
        max_size=len(WALK),
    )
)
def test_no_message_order_reaches_a_game_without_screening_and_the_gate(server, steps):
    """A participant's walk with steps dropped and arbitrary messages slipped in between."""
    url, _ = server
    sequence = [
        m for (keep, extra), step in zip(steps, WALK, strict=False) for m in [*extra, *([step] if keep else [])]
    ]
    gate_held(asyncio.run(play(url, [msgpack.packb(m, use_bin_type=True) for m in sequence])))


def test_the_records_agree_no_session_entered_a_game_unscreened(server):
    """The server's own records, after all the fuzzing above: every entry into a game followed a passed screening."""
    _, data = server
    entered = 0
    for log in (data / "sessions").glob("*.msgpack"):
        passed = False
        for record in read_records(log):
            if record["kind"] == "screening":
                passed = record["verdict"] == []
            if record["kind"] == "transition" and record["dest"] == "in_game" and record["source"] == "ready":
                assert passed, log
                entered += 1
    assert entered > 0
