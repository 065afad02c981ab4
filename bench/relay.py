"""The fan-out's own cost: a plain Tornado WebSocket relay for 2-player lockstep, no lifecycle, no records.

Connections are paired as they arrive. Each pair gets a `match` message, then a per-match 10 fps
`PeriodicCallback` sends both players a msgpack `frame {f, actions}` of the inputs that arrived for that
frame (the previous action otherwise). Every message a player sends is msgpack-decoded; `input`s are kept.

Run: .venv/bin/python -m bench.relay --port 9999   (`python -m bench.multiplayer` starts it itself)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import secrets
import time
from typing import Any

import msgpack
import tornado.ioloop
import tornado.web
import tornado.websocket

AGENTS = ("p0", "p1")
FPS = 10
DELAY = 2
TICKS: list[tuple[int, float, int]] = []  # (pair, server time, frame) of every tick, for the benchmark's window
SENT = [0]  # frame messages written


class Pair:
    def __init__(self, players: list[Relay]) -> None:
        self.players = players
        self.f = 0
        self.inputs: dict[int, dict[str, Any]] = {}
        self.last = dict.fromkeys(AGENTS, 0)
        match_id = secrets.token_hex(8)
        agents = {a: {"kind": "human", "keys": {"ArrowUp": 0, "ArrowRight": 1}, "default_action": 0} for a in AGENTS}
        for agent, player in zip(AGENTS, players, strict=True):
            player.pair, player.agent = self, agent
            player.send(
                {
                    "type": "match",
                    "match_id": match_id,
                    "agent": agent,
                    "agents": agents,
                    "input_delay": DELAY,
                    "hash_every": 30,
                    "frames": [],
                }
            )
        self.number = next(_pairs)
        self.ticker = tornado.ioloop.PeriodicCallback(self.tick, 1000 / FPS)
        self.ticker.start()

    def tick(self) -> None:
        self.f += 1
        arrived = self.inputs.pop(self.f, {})
        actions = {a: arrived.get(a, self.last[a]) for a in AGENTS}
        self.last = actions
        frame = msgpack.packb({"type": "frame", "f": self.f, "actions": actions, "filled": []}, use_bin_type=True)
        TICKS.append((self.number, time.monotonic(), self.f))
        for player in self.players:
            if player.ws_connection is not None:
                player.write_message(frame, binary=True)
                SENT[0] += 1

    def stop(self) -> None:
        self.ticker.stop()


WAITING: list[Relay] = []
_pairs = itertools.count()


class Stats(tornado.web.RequestHandler):
    """`/stats?since=T`: frames written so far and the ticks after server time T (the benchmark's window)."""

    def get(self) -> None:
        since = float(self.get_query_argument("since", "0"))
        ticks = [t for t in TICKS if t[1] >= since]
        self.write(json.dumps({"sent": SENT[0], "ticks": ticks}))


class Relay(tornado.websocket.WebSocketHandler):
    pair: Pair | None = None
    agent = ""

    def open(self) -> None:
        WAITING.append(self)
        if len(WAITING) >= 2:
            Pair([WAITING.pop(0), WAITING.pop(0)])

    def send(self, message: dict[str, Any]) -> None:
        self.write_message(msgpack.packb(message, use_bin_type=True), binary=True)

    def on_message(self, frame: bytes | str) -> None:
        message = msgpack.unpackb(frame, raw=False)
        if message.get("type") == "input" and self.pair is not None:
            self.pair.inputs.setdefault(message["f"], {}).setdefault(self.agent, message["action"])

    def on_close(self) -> None:
        if self in WAITING:
            WAITING.remove(self)
        if self.pair is not None:
            self.pair.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    tornado.web.Application([(r"/ws", Relay), (r"/stats", Stats)], websocket_ping_interval=15.0).listen(
        args.port, "127.0.0.1"
    )
    print(f"relay on 127.0.0.1:{args.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
