"""Floods and slow sockets against `python -m server`: bounded memory and disk, and a real participant still served.

Run: .venv/bin/python -m bench.abuse [--flood 5000] [--slow 1000] [--idle 3000] [--posts 12]
Starts the server with its default limits (and short --hello-timeout/--idle-timeout so the run takes seconds),
then from 127.0.0.2: (1) `flood` WebSocket connections that each say hello and hang up at once, (1b) the same
from 127.0.0.3 with a 60 KB User-Agent, (2) `slow` sockets that send half a request header and stall
(slowloris), (2b) `slow` sockets that send half a WebSocket upgrade and stall, (3) `idle` WebSocket connections
that never say hello, (4) `posts` requests at once declaring and sending a 100 MB body to /admin/x and /ws.
During (2)-(4) a participant from 127.0.0.1 walks the whole study. Reports the server's RSS, the data
directory's size, how the attacks were answered and whether the participant finished.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.faults import rss_kb
from client.harness import masked_frame, port_of, start_server, stop_server, upgrade
from client.participant import walk
from server import protocol

ATTACKER = "127.0.0.2"
LONG_UA_ATTACKER = "127.0.0.3"  # its own address, so the per-address session limit does not hide what it stores
LONG_UA = "Mozilla/5.0 " + "A" * 60_000
TIMEOUT = 3.0  # the server's --hello-timeout and --idle-timeout for this run


async def opened(port: int, address: str = ATTACKER) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))


async def flood_one(
    port: int, gate: asyncio.Semaphore, seen: Counter, address: str = ATTACKER, user_agent: str = "bench"
) -> None:
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(opened(port, address), 10)
            writer.write(upgrade(port, user_agent))
            status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if b" 101 " not in status.split(b"\r\n")[0]:
                seen["refused_handshake"] += 1
            else:
                writer.write(masked_frame(protocol.encode({"type": "hello"})))
                await writer.drain()
                kinds = (b"experiment_config", b"rate_limited", b"server_full")
                answer = b""
                while not any(k in answer for k in kinds):
                    chunk = await asyncio.wait_for(reader.read(4096), 10)
                    if not chunk:
                        break
                    answer += chunk  # the server's first frame is its ping; the answer to hello follows
                seen[next((k.decode() for k in kinds if k in answer), "closed")] += 1
            writer.close()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            seen["error"] += 1


async def hold(port: int, count: int, first_bytes: bytes | None, seen: Counter) -> list[asyncio.StreamWriter]:
    """Open `count` sockets that send `first_bytes` (or a WebSocket upgrade, then nothing) and stall."""
    writers = []
    for _ in range(count):
        try:
            reader, writer = await asyncio.wait_for(opened(port), 10)
        except (TimeoutError, OSError):
            seen["connect_error"] += 1
            continue
        writer.write(first_bytes if first_bytes is not None else upgrade(port))
        writers.append(writer)
        writer.reader = reader  # type: ignore[attr-defined]
    return writers


async def closed_by_server(writers: list[asyncio.StreamWriter]) -> int:
    """How many held sockets the server has closed (reads until EOF, bounded)."""

    async def gone(writer: asyncio.StreamWriter) -> bool:
        """EOF, or a WebSocket close frame (the server then waits a moment for the client's own close)."""
        try:
            while chunk := await asyncio.wait_for(writer.reader.read(65536), 0.5):  # type: ignore[attr-defined]
                if b"\x88" in chunk:
                    return True
            return True
        except (TimeoutError, OSError):
            return False

    return sum(await asyncio.gather(*(gone(w) for w in writers)))


async def big_post(port: int, path: str, size: int, seen: Counter) -> None:
    """Declare and send a `size`-byte body; count how the server answered and how much it took before it closed."""
    sent = 0
    try:
        reader, writer = await asyncio.wait_for(opened(port), 10)
    except (TimeoutError, OSError) as exc:
        seen[f"connect error {type(exc).__name__}"] += 1
        return
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n\r\n".encode())
        chunk = b"x" * 65536
        while sent < size:
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 10)
            sent += len(chunk)
        status = await asyncio.wait_for(reader.read(200), 10)
        seen[status.split(b"\r\n")[0].decode() or "closed without an answer"] += 1
    except (ConnectionError, TimeoutError) as exc:
        seen[f"closed by the server ({type(exc).__name__})"] += 1  # the rest of the body was never read
    finally:
        seen["kb_sent_in_all"] += sent // 1024
        writer.close()


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def attack(port: int, args: argparse.Namespace, pid: int, data: Path) -> dict:
    url = f"ws://127.0.0.1:{port}/ws"
    report: dict = {"rss_kb_start": rss_kb(pid)}
    seen: Counter = Counter()
    started = time.monotonic()
    gate = asyncio.Semaphore(200)
    await asyncio.gather(*(flood_one(port, gate, seen) for _ in range(args.flood)))
    report["flood"] = {
        "connections": args.flood,
        "answers": dict(seen),
        "seconds": round(time.monotonic() - started, 1),
    }
    report["rss_kb_after_flood"] = rss_kb(pid)
    report["data_dir_bytes_after_flood"] = disk_bytes(data)

    seen.clear()
    started = time.monotonic()
    await asyncio.gather(
        *(flood_one(port, gate, seen, LONG_UA_ATTACKER, LONG_UA) for _ in range(args.flood)),
    )
    report["long_user_agent_flood"] = {
        "connections": args.flood,
        "user_agent_bytes": len(LONG_UA),
        "answers": dict(seen),
        "seconds": round(time.monotonic() - started, 1),
        "data_dir_bytes_added": disk_bytes(data) - report["data_dir_bytes_after_flood"],
    }
    report["rss_kb_after_long_user_agent_flood"] = rss_kb(pid)

    slow_seen: Counter = Counter()
    slow = await hold(port, args.slow, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", slow_seen)
    half_seen: Counter = Counter()
    half = await hold(port, args.slow, upgrade(port)[:-40], half_seen)
    idle_seen: Counter = Counter()
    idle = await hold(port, args.idle, None, idle_seen)
    report["rss_kb_holding"] = rss_kb(pid)
    walked = await asyncio.wait_for(walk(url, participant_id="real-1", steps=3), 30)
    report["real_participant"] = walked["outcome"]
    await asyncio.sleep(TIMEOUT + 2)
    report["slowloris"] = {"sockets": len(slow), "closed_by_server": await closed_by_server(slow), **slow_seen}
    half_closed = await closed_by_server(half)
    report["unfinished_upgrades"] = {"sockets": len(half), "closed_by_server": half_closed, **half_seen}
    report["idle_websockets"] = {"sockets": len(idle), "closed_by_server": await closed_by_server(idle), **idle_seen}
    for writer in slow + half + idle:
        writer.close()
    await asyncio.sleep(1)
    report["rss_kb_after_holding"] = rss_kb(pid)

    post_seen: Counter = Counter()
    peak = [rss_kb(pid)]

    async def watch() -> None:
        while True:
            peak.append(rss_kb(pid))
            await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(watch())
    posting = asyncio.gather(
        *(big_post(port, ("/admin/x", "/ws")[i % 2], 100 * 1024 * 1024, post_seen) for i in range(args.posts))
    )
    walked = await asyncio.wait_for(walk(url, participant_id="real-2", steps=3), 30)
    await posting
    watcher.cancel()
    report["big_posts"] = {"requests": args.posts, "body_mb_each": 100, "answers": dict(post_seen)}
    report["rss_kb_peak_during_posts"] = max(peak)
    report["real_participant_during_posts"] = walked["outcome"]
    await asyncio.sleep(1)
    report["rss_kb_end"] = rss_kb(pid)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flood", type=int, default=5000)
    parser.add_argument("--slow", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=3000)
    parser.add_argument("--posts", type=int, default=12)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        timeouts = ("--hello-timeout", str(TIMEOUT), "--idle-timeout", str(TIMEOUT))
        proc, url = start_server(data, *timeouts)
        try:
            report = asyncio.run(attack(port_of(url), args, proc.pid, data))
            report["server_alive"] = proc.poll() is None
            report["data_dir_bytes"] = disk_bytes(data)
            report["session_files"] = len(list((data / "sessions").glob("*.msgpack")))
        finally:
            stop_server(proc)
    print(json.dumps(report, indent=2))
    served = report["real_participant"] == report["real_participant_during_posts"] == "completed"
    return 0 if report["server_alive"] and served else 1


if __name__ == "__main__":
    sys.exit(main())
