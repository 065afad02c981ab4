"""Participants of interactive-gym 0.1.1 over Socket.IO (WebSocket transport), for `bench/predecessor.py`.

Run by the predecessor's venv's python (it needs `python-socketio[client]` and `aiohttp`, which Preflight's venv
does not have), in its own process; prints one JSON line with the outcome and each advance's round trip.

Each participant walks what its page does, as far as Preflight's benchmark walk goes:
GET /<subject_id> (the page; the server builds the participant's stager here), connect over WebSocket,
`register_subject` until the start scene's `activate_scene`, `ping` until `pong` (the predecessor's only check of a
participant, its latency rule; it has no device screening and no server-side preload report), `advance_scene` until
the next scene's `activate_scene` (the round trip measured), disconnect.
Every wait has a timeout, `--participants` bounds the loop and `--concurrency` the participants under way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

import aiohttp
import socketio


async def participant(
    base: str, http: aiohttp.ClientSession, timeout: float, pings: int, round_trips: list[float]
) -> None:
    subject_id = f"bench-{uuid.uuid4().hex[:16]}"
    async with asyncio.timeout(timeout):
        async with http.get(f"{base}/{subject_id}") as page:
            await page.read()
            if page.status != 200:
                raise RuntimeError(f"page GET answered {page.status}")
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    client = socketio.AsyncClient(reconnection=False)

    @client.on("*")
    async def any_event(event: str, data: Any = None) -> None:
        inbox.put_nowait((event, data))

    async def until(event: str) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                name, data = await inbox.get()
                if name == event:
                    return data

    await client.connect(base, transports=["websocket"], wait_timeout=timeout)
    try:
        await client.emit("register_subject", {"subject_id": subject_id})
        scene = await until("activate_scene")
        if scene.get("scene_id") != "start":
            raise RuntimeError(f"first scene {scene.get('scene_id')!r}")
        for _ in range(pings):
            await client.emit("ping", {"ping_ms": 0, "document_in_focus": True})
            await until("pong")
        t0 = time.perf_counter()
        await client.emit("advance_scene", {})
        while (scene := await until("activate_scene")).get("scene_id") != "instructions":
            pass
        round_trips.append((time.perf_counter() - t0) * 1000)
    finally:
        async with asyncio.timeout(timeout):
            await client.disconnect()


async def run(base: str, participants: int, concurrency: int, timeout: float, pings: int) -> dict[str, Any]:
    slots = asyncio.Semaphore(concurrency)
    round_trips: list[float] = []
    errors: list[str] = []

    async with aiohttp.ClientSession() as http:

        async def one() -> None:
            async with slots:
                try:
                    await participant(base, http, timeout, pings, round_trips)
                except Exception as exc:  # a failed participant is counted, not fatal
                    errors.append(f"{type(exc).__name__}: {exc}")

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(participants)))
        seconds = time.perf_counter() - t0
    return {
        "ok": len(round_trips),
        "failed": len(errors),
        "errors": errors[:5],
        "advance_ms": round_trips,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--participants", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for each wait")
    parser.add_argument("--pings", type=int, default=1, help="ping/pong round trips before the advance")
    args = parser.parse_args()
    result = asyncio.run(run(args.url.rstrip("/"), args.participants, args.concurrency, args.timeout, args.pings))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
