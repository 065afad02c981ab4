"""The wire format as pure functions."""

from __future__ import annotations

import msgpack
import pytest

from server import protocol
from server.protocol import Code, Refusal


def test_every_client_type_has_a_schema_and_every_code_is_a_string():
    assert set(protocol.SCHEMAS) == set(protocol.CLIENT_TYPES)
    assert all(isinstance(c.value, str) for c in Code)


def test_a_valid_message_round_trips():
    msg = {"type": "preload", "status": "loading", "stage": "packages", "elapsed_ms": 12.5, "done": 1, "total": 2}
    assert protocol.decode(protocol.encode(msg)) == msg


@pytest.mark.parametrize(
    "frame, code, words",
    [
        (b"", Code.BAD_MESSAGE, "not a msgpack"),
        (msgpack.packb({"type": "hello"}) + b"\x01", Code.BAD_MESSAGE, "not a msgpack"),
        (msgpack.packb({1: "hello"}), Code.BAD_MESSAGE, "not a msgpack"),
        (msgpack.packb("hello"), Code.BAD_MESSAGE, "must be a map"),
        (msgpack.packb({"type": "screening"}), Code.BAD_MESSAGE, "missing field 'facts'"),
        (msgpack.packb({"type": "advance", "now": True}), Code.BAD_MESSAGE, "unexpected field 'now'"),
        (msgpack.packb({"type": "hello", "params": {"PROLIFIC_PID": "a b"}}), Code.BAD_MESSAGE, "PROLIFIC_PID"),
        (
            msgpack.packb({"type": "screening", "facts": {"webassembly": "yes"}}),
            Code.BAD_MESSAGE,
            "webassembly must be",
        ),
        (msgpack.packb({"type": "screening", "facts": {"nested": {"a": 1}}}), Code.BAD_MESSAGE, "plain value"),
        (msgpack.packb({"type": "preload", "status": "ready", "elapsed_ms": -1}), Code.BAD_MESSAGE, "non-negative"),
        (msgpack.packb({"type": "x" * 500}), Code.UNKNOWN_TYPE, "unknown message type"),
        (msgpack.packb({"type": "steps", "steps": []}), Code.BAD_MESSAGE, "list of 1 to 256 steps"),
        (msgpack.packb({"type": "steps", "steps": [{"step": 1}]}), Code.BAD_MESSAGE, "episode of every step"),
        (msgpack.packb({"type": "steps", "steps": [{"episode": 0, "step": 1}] * 257}), Code.BAD_MESSAGE, "1 to 256"),
        (
            msgpack.packb(
                {"type": "steps", "steps": [{"episode": 0, "step": 1, "info": {"a": {"b": [[[[[[[1]]]]]]]}}}]}
            ),
            Code.BAD_MESSAGE,
            "nested deeper",
        ),
        ("text", Code.BAD_MESSAGE, "binary"),
    ],
)
def test_bad_frames_become_refusals(frame, code, words):
    refusal = protocol.decode(frame)
    assert isinstance(refusal, Refusal) and refusal.code is code and words in refusal.message


def test_deeply_nested_frames_are_refused_not_crashing():
    frame = b"\x91" * 100_000 + b"\xc0"
    assert isinstance(protocol.decode(frame), Refusal)


def test_game_events_keep_their_research_fields():
    msg = {"type": "game_event", "step": 3, "action": [1, 0], "reward": 0.5}
    assert protocol.decode(protocol.encode(msg)) == msg
