"""The stack's own limit: a plain Tornado WebSocket server that decodes each msgpack frame and sends it back.

Run: .venv/bin/python -m bench.echo --port 9999   (`python -m bench.server` starts it itself)
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import msgpack
import tornado.web
import tornado.websocket


class Echo(tornado.websocket.WebSocketHandler):
    def on_message(self, frame: bytes | str) -> None:
        message = msgpack.unpackb(frame, raw=False)
        self.write_message(msgpack.packb(message, use_bin_type=True), binary=True)


class Twice(Echo):
    """`/ws2`: each message answered with two frames, as a server answering `hello` with config and first scene."""

    def on_message(self, frame: bytes | str) -> None:
        message = msgpack.unpackb(frame, raw=False)
        self.write_message(msgpack.packb(message, use_bin_type=True), binary=True)
        self.write_message(msgpack.packb(message, use_bin_type=True), binary=True)


class Ack(Echo):
    """`/ack`: each message confirmed with a small `received`, as Preflight confirms a numbered batch of steps."""

    def on_message(self, frame: bytes | str) -> None:
        message = msgpack.unpackb(frame, raw=False)
        self.write_message(msgpack.packb({"type": "received", "n": message.get("n")}, use_bin_type=True), binary=True)


class Page(tornado.web.RequestHandler):
    """`/`: the participant page's file as it is on disk, for flows that start with a page GET (bench.predecessor)."""

    def initialize(self, body: bytes) -> None:
        self.body = body

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(self.body)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    page = (Path(__file__).resolve().parent.parent / "client" / "web" / "index.html").read_bytes()
    routes = [(r"/", Page, {"body": page}), (r"/ws", Echo), (r"/ws2", Twice), (r"/ack", Ack)]
    tornado.web.Application(routes, websocket_ping_interval=15.0).listen(args.port, "127.0.0.1")
    print(f"echo on 127.0.0.1:{args.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
