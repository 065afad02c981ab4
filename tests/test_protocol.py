"""The wire format as pure functions."""

from __future__ import annotations

import math
import random
from typing import Any

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


def _random_batch(rng: random.Random) -> list[Any]:
    """Steps as pages send them (an `info`, the keys held, now and then nested deeper), some with one defect."""

    def value(depth: int) -> Any:
        r = rng.random()
        if r < 0.1 and depth < 9:
            return {rng.choice("abc"): value(depth + 1) for _ in range(rng.randint(0, 3))}
        if r < 0.2 and depth < 9:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return rng.choice([0, 1, 2.5, -0.01, True, None, "k", 2**40])

    batch = [
        {
            "episode": rng.randint(0, 3),
            "step": rng.randint(0, 10**6),
            "action": rng.randint(0, 4),
            "reward": rng.random(),
            "terminated": False,
            **({"info": value(1)} if rng.random() < 0.5 else {}),
            **({"keys": [rng.choice("wasd") for _ in range(rng.randint(0, 3))]} if rng.random() < 0.5 else {}),
        }
        for _ in range(rng.choice([1, 8, 8, 16, 256]))
    ]
    if rng.random() < 0.4:
        defects = [
            ("reward", math.nan),
            ("reward", -math.inf),
            ("info", {1: 2}),
            ("keys", [math.nan]),
            ("info", {"a": b"x"}),
            ("info", [[[[[[[[[1]]]]]]]]]),
            ("keys", list(range(5000))),
            ("step", -1),
            ("episode", 2**31),
            ("step", True),
            ("step", 1.0),
            ("t", b"x"),
            (3, 1),
        ]
        key, bad = rng.choice(defects)
        victim = rng.choice(batch)
        victim[key] = bad
        if rng.random() < 0.2:
            del victim["step"]
    return batch


def test_the_whole_batch_check_of_steps_accepts_only_what_the_step_by_step_check_accepts():
    rng = random.Random(16)
    taken = 0
    for _ in range(3000):
        batch = _random_batch(rng)
        if protocol._flat_steps(batch):
            taken += 1
            assert protocol._each_step(batch) is None, batch
        assert protocol._steps(batch) == protocol._each_step(batch)
    assert taken > 1000  # most batches are taken whole; the rest say exactly what is wrong, as before
    step = {"episode": 0, "step": 1, "action": 2, "reward": -0.01, "terminated": False, "t": 0.5}
    assert protocol._flat_steps([step, {**step, "info": {}, "keys": ["ArrowUp"]}])


def test_the_whole_batch_check_of_steps_looks_again_when_finite_numbers_overflow_their_sum():
    step = {"episode": 0, "step": 1, "action": 2, "reward": 1.7e308, "terminated": False}
    big = [step, {**step, "step": 2}, {**step, "step": 3, "action": 2**1100}]
    assert protocol._steps(big) is None
    for bad in (math.inf, -math.inf, math.nan):
        batch = [*big, {**step, "step": 4, "reward": bad}, {**step, "step": 5, "reward": -bad}]
        assert protocol._steps(batch) == protocol._each_step(batch) is not None
