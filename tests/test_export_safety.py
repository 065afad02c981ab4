"""Exports safe to open: no NaN or Infinity gets in, CSV cells never start a formula, JSON Lines strictly valid."""

from __future__ import annotations

import csv
import json
import math

import msgpack
import pytest

from client.participant import DESKTOP_CHROMIUM
from server import protocol
from server.export import export, safe_cell
from server.store import framed

NON_FINITE = [math.nan, math.inf, -math.inf]


def refuse_constant(name: str) -> None:
    """Python's json reads NaN and Infinity unless told not to; strict readers refuse them."""
    raise AssertionError(f"{name} in a JSON Lines export")


@pytest.mark.parametrize("bad", NON_FINITE)
@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "steps", "steps": [{"episode": 0, "step": 1, "reward": None}]}, "steps: steps"),
        ({"type": "steps", "steps": [{"episode": 0, "step": 1, "info": {"x": [None]}}]}, "steps: steps"),
        ({"type": "game_event", "score": None}, "game_event: score"),
        ({"type": "game_over", "steps": 3, "total_reward": None}, "game_over: total_reward"),
        ({"type": "preload", "status": "ready", "elapsed_ms": None}, "preload: elapsed_ms"),
        ({"type": "screening", "facts": {**DESKTOP_CHROMIUM, "device_pixel_ratio": None}}, "screening: facts"),
        ({"type": "screening", "facts": {"extra_fact": None}}, "screening: facts"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_field(message, field, bad):
    def put(value):  # the one None in the message becomes the non-finite number
        if value is None:
            return bad
        if isinstance(value, dict):
            return {k: put(v) for k, v in value.items()}
        if isinstance(value, list):
            return [put(v) for v in value]
        return value

    refusal = protocol.decode(protocol.encode(put(message)))
    assert isinstance(refusal, protocol.Refusal)
    assert refusal.code == protocol.Code.BAD_MESSAGE
    assert refusal.message.startswith(field), refusal.message


@pytest.mark.parametrize(
    ("cell", "shown"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("plain", "plain"),
        (-1.5, -1.5),
        ("", ""),
    ],
)
def test_csv_cells_that_would_start_a_formula_are_neutralised(cell, shown):
    assert safe_cell(cell) == shown


@pytest.mark.gen_test(timeout=20)
async def test_exports_of_hostile_and_old_non_finite_data_open_safely(connect, config, tmp_path):
    client = await connect()
    await client.send({"type": "hello", "participant_id": "hostile-1"})
    await client.until_type("experiment_config")
    await client.send({"type": "screening", "facts": DESKTOP_CHROMIUM})
    await client.send({"type": "preload", "status": "ready"})
    await client.until_state("ready")
    for _ in range(2):
        await client.send({"type": "advance"})
        await client.until_type("activate_scene")
    await client.until_state("in_game")
    step = {"episode": 0, "step": 1, "action": "=1+2", "reward": -1.0, "info": {"note": "@x"}, "keys": ["+"]}
    await client.send_data({"type": "steps", "steps": [step]})
    await client.send_data({"type": "game_event", "label": "-cmd|' /C calc'!A0"})
    await client.send_data({"type": "steps", "steps": [{**step, "step": 2}]})
    await client.until_confirmed()
    log = next((config.data_dir / "sessions").glob("*.msgpack"))
    scene = "gridworld"
    with open(log, "ab") as f:  # data stored by an older server, before non-finite numbers were refused
        f.write(
            framed(
                msgpack.packb(
                    {
                        "kind": "steps",
                        "t": 0.0,
                        "wall": 0.0,
                        "scene_id": scene,
                        "steps": [{"episode": 0, "step": 3, "reward": math.nan, "info": {"v": math.inf}}],
                    }
                )
            )
        )

    export(config.data_dir, "csv", tmp_path / "csv")
    export(config.data_dir, "jsonl", tmp_path / "jsonl")
    for path in (tmp_path / "jsonl").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            json.loads(line, parse_constant=refuse_constant)
    with (tmp_path / "csv" / "steps.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["action"] for r in rows if r["step"] in ("1", "2")] == ["'=1+2", "'=1+2"]
    assert [r["reward"] for r in rows] == ["-1.0", "-1.0", "nan"]  # a number stays a number; NaN is named
    for path in (tmp_path / "csv").glob("*.csv"):
        with path.open(newline="") as f:
            for row in csv.reader(f):
                assert not any(cell.startswith(("=", "+", "@", "\t", "\r")) for cell in row), (path.name, row)
