"""The server under replayed load, next to a plain Tornado + msgpack echo server measured in the same run.

Run: .venv/bin/python -m bench.server [--runs 3] [--sessions 2000] [--idle 10000]
Both servers run as subprocesses pinned to one core, the load client on the other; each figure is taken from
one server and right after from the other (which goes first alternates by run). Every figure is a median over
--runs and is also given as a ratio to the echo server's: the ratio of the medians, and the median of each run's
own ratio (paired: the two figures of a pair were taken a minute apart at most, so a drift of the machine's speed
between runs cancels).
Server CPU comes from /proc/<pid>/stat, so it does not depend on how fast the client is.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from client.harness import ONE_ADDRESS_IS_MANY, ROOT, free_port
from client.participant import DESKTOP_CHROMIUM, ProtocolClient, walk
from client.runner import replay
from client.stats import percentile
from client.trace import Trace, load
from server import protocol
from server.store import FilePool, SessionLog

GRACE = 2.0  # seconds a dropped session waits for its participant; short, so ended rounds really end
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SERVER_CPU, CLIENT_CPU = 1, 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from the OS."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


@contextmanager
def started(argv: list[str], port: int) -> Iterator[subprocess.Popen]:
    """A server subprocess pinned to its core, once it accepts connections."""
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(proc.pid, {SERVER_CPU})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"{argv} did not start")
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def handshakes(url: str, n: int, concurrency: int) -> float:
    """Connections per second that open, send `hello` and get the first reply."""
    hello = protocol.encode({"type": "hello"})
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            conn = await websocket_connect(HTTPRequest(url, headers={"User-Agent": DESKTOP_CHROMIUM["user_agent"]}))
            await conn.write_message(hello, binary=True)
            assert await conn.read_message() is not None
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t0)


async def handshake_cpu(url: str, n: int, concurrency: int, pid: int, replies: int) -> float:
    """Server CPU ms per participant that connects, says `hello`, reads `replies` frames and closes."""
    hello = protocol.encode({"type": "hello"})
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            conn = await websocket_connect(HTTPRequest(url, headers={"User-Agent": DESKTOP_CHROMIUM["user_agent"]}))
            await conn.write_message(hello, binary=True)
            for _ in range(replies):
                assert await conn.read_message() is not None
            conn.close()

    cpu0 = cpu_seconds(pid)
    await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(0.5)  # the server's side of the closes
    return (cpu_seconds(pid) - cpu0) / n * 1000


async def reply(conn: Any) -> dict[str, Any]:
    frame = await conn.read_message()
    assert isinstance(frame, bytes), "the server closed the connection"
    message: dict[str, Any] = protocol.msgpack.unpackb(frame, raw=False)
    return message


async def idle(url: str, n: int, pid: int) -> tuple[list[Any], int]:
    """Open n sessions that each said `hello`, got their replies and acknowledged them as the page does (within
    200 ms), then leave them idle; returns them and the RSS. A client that never acknowledged would leave the
    server holding each session's first messages for a resend, which no real participant's session does."""
    hello = protocol.encode({"type": "hello"})
    slots = asyncio.Semaphore(200)
    conns: list[Any] = []

    async def one() -> None:
        async with slots:
            conn = await websocket_connect(HTTPRequest(url, headers={"User-Agent": DESKTOP_CHROMIUM["user_agent"]}))
            await conn.write_message(hello, binary=True)
            message = await reply(conn)
            while "seq" in message and message["type"] != "state":
                message = await reply(conn)
            if "seq" in message:
                await conn.write_message(protocol.encode({"type": "ack", "seq": message["seq"]}), binary=True)
            conns.append(conn)

    await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(1.0)
    return conns, rss_bytes(pid)


async def close_all(conns: list[Any]) -> None:
    for conn in conns:
        conn.close()
    await asyncio.sleep(3.0)


async def to_game(url: str) -> ProtocolClient:
    """A participant walked from `hello` into the first game, as the walk client does it."""
    client = await ProtocolClient.connect(url, timeout=60)
    await client.send({"type": "hello"})
    reported = False
    while True:
        message = await client.recv()
        if message is None:
            raise ConnectionError("closed before the game")
        if message["type"] != "state":
            continue
        if message["state"] == "in_game":
            return client
        if message["state"] == "preflight" and not reported:
            reported = True
            await client.send({"type": "screening", "facts": DESKTOP_CHROMIUM})
            await client.send_data({"type": "preload", "status": "ready", "elapsed_ms": 1})
        elif message["may_advance"]:
            await client.send({"type": "advance"})


def step_batch(first: int, size: int) -> dict[str, Any]:
    """A `steps` message as the page sends it: `size` steps of the running episode."""
    steps = [
        {"episode": 0, "step": i, "action": i % 4, "reward": -0.01, "terminated": False, "t": i / 30}
        for i in range(first, first + size)
    ]
    return {"type": "steps", "steps": steps}


async def steps_cpu(url: str, pid: int, sessions: int, batches: int, size: int, echo: bool) -> float:
    """Server CPU µs per game step received in batches of `size`, each batch confirmed (Preflight records them all);
    the echo server's `/ack` decodes the same frames and confirms each with the same small message."""
    if echo:
        clients = [await ProtocolClient.connect(url, timeout=60) for _ in range(sessions)]
    else:
        clients = list(await asyncio.gather(*(to_game(url) for _ in range(sessions))))
    await asyncio.sleep(0.5)

    async def play(client: ProtocolClient) -> None:
        for b in range(batches):
            await client.send_data(step_batch(1 + b * size, size))
            if b % 8 == 7:
                await client.until_confirmed()
        await client.until_confirmed()

    cpu0 = cpu_seconds(pid)
    await asyncio.gather(*(play(c) for c in clients))
    cpu = cpu_seconds(pid) - cpu0
    for client in clients:
        client.close()
    await asyncio.sleep(0.5)
    return cpu / (sessions * batches * size) * 1e6


def measure_replay(traces, url: str, pid: int, sessions: int, concurrency: int) -> dict[str, float]:
    cpu0, client0 = cpu_seconds(pid), resource.getrusage(resource.RUSAGE_SELF)
    collector, duration = asyncio.run(
        replay(traces, url, sessions=sessions, concurrency=concurrency, speed=0, ramp=0, max_seconds=300, timeout=30)
    )
    cpu1, client1 = cpu_seconds(pid), resource.getrusage(resource.RUSAGE_SELF)
    report = collector.report(duration)
    bad = {k: v for k, v in report["sessions"].items() if k not in ("ok", "total") and v}
    if bad:
        raise RuntimeError(f"replay went wrong: {bad} {report['divergence_examples']}")
    client_cpu = (client1.ru_utime + client1.ru_stime) - (client0.ru_utime + client0.ru_stime)
    return {
        "msgs_per_s": report["messages"]["sent_per_s"],
        "p99_ms": report["latency_ms"]["all"]["p99"],
        "cpu_ms_per_session": (cpu1 - cpu0) / sessions * 1000,
        "server_busy": (cpu1 - cpu0) / duration,
        "client_busy": client_cpu / duration,
        "cpu_us_per_msg": (cpu1 - cpu0) / report["messages"]["sent"] * 1e6,
    }


def has_game_events(trace: Trace) -> bool:
    return any(s.label == "game_event" for s in trace.steps)


def steady(trace: Trace, events: int) -> Trace:
    """The trace with `events` game events in its game instead of its own: the in-game steady state."""
    first = next(i for i, s in enumerate(trace.steps) if s.label == "game_event")
    game = trace.steps[first]
    rest = tuple(s for s in trace.steps[first:] if s.label != "game_event")
    return Trace(trace.source + " (steady)", trace.steps[:first] + (game,) * events + rest, trace.expected)


def write_cost(records: int, sessions: int, tmp: Path) -> dict[str, float]:
    """How long one recorded frame keeps the event loop: a real SessionLog append, timed alone."""
    tmp.mkdir(parents=True, exist_ok=True)
    pool = FilePool()
    logs = [SessionLog(tmp / f"{i}.msgpack", pool) for i in range(sessions)]
    frame = protocol.encode(protocol.state("in_game", False, scene_id="gridworld"))
    times = []
    for i in range(records):
        t0 = time.perf_counter()
        logs[i % sessions].frame("out", frame, True)
        times.append(time.perf_counter() - t0)
    for log in logs:
        log.close()
    times.sort()
    return {
        "p50_us": percentile(times, 50) * 1e6,
        "p99_us": percentile(times, 99) * 1e6,
        "p999_us": percentile(times, 99.9) * 1e6,
        "max_us": times[-1] * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=2000, help="replayed sessions per measurement")
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--idle", type=int, default=10_000, help="idle connected sessions for the memory figure")
    parser.add_argument(
        "--steady-events", type=int, default=200, help="game events per session in the steady-state figure"
    )
    parser.add_argument("--step-batches", type=int, default=200, help="batches of 8 steps per game, 50 games")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 10,000 sockets each side; servers inherit it
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {CLIENT_CPU})
    tmp = Path(tempfile.mkdtemp(prefix="preflight-bench-"))
    py = sys.executable
    results: dict[str, dict[str, list[float]]] = {"preflight": {}, "echo": {}}
    traces: list[Trace] = []

    def add(server: str, figures: dict[str, float]) -> None:
        for name, value in figures.items():
            results[server].setdefault(name, []).append(value)

    def figures(server: str, url: str, pid: int, run: int) -> Iterator[Callable[[], dict[str, float]]]:
        """Each figure of one server, in the order they are taken; the two servers take each in turn."""
        echo = server == "echo"
        played = [t.as_echo() for t in traces] if echo else traces
        yield lambda: {"handshakes_per_s": asyncio.run(handshakes(url, args.handshakes, 50))}
        # connect, `hello`, until `experiment_config` and `activate_scene` (two frames), close
        yield lambda: {
            "cpu_ms_per_handshake": asyncio.run(handshake_cpu(url + "2" if echo else url, args.handshakes, 50, pid, 2))
        }
        for concurrency in (100, 1000):
            yield lambda c=concurrency: {
                f"{name}@{c}": value for name, value in measure_replay(played, url, pid, args.sessions, c).items()
            }
        # the walk client now plays its game as numbered `steps` batches, which a replay cannot repeat
        # (a repeated `n` is a resend); the in-game figure is then `cpu_us_per_step@game` alone
        in_game = [steady(t, args.steady_events) for t in traces if has_game_events(t)]
        if in_game:
            played_in_game = [t.as_echo() for t in in_game] if echo else in_game
            yield lambda: {
                f"{name}@steady": value
                for name, value in measure_replay(played_in_game, url, pid, args.sessions // 10, 100).items()
                if name in ("cpu_us_per_msg", "msgs_per_s")
            }
        # in a game: batches of 8 steps, as the page sends them, against the same frames to `/ack`
        yield lambda: {
            "cpu_us_per_step@game": asyncio.run(
                steps_cpu(url.replace("/ws", "/ack") if echo else url, pid, 50, args.step_batches, 8, echo)
            )
        }
        if run == 0:
            yield lambda: asyncio.run(memory(url, pid))

    async def memory(url: str, pid: int) -> dict[str, float]:
        # RSS never shrinks back (the allocator keeps its arenas), so "nothing left behind"
        # is measured as reuse: the same number of sessions again must not need more memory.
        base = rss_bytes(pid)
        held = []
        for _ in range(3):
            conns, rss = await idle(url, args.idle, pid)
            held.append(rss)
            await close_all(conns)
        return {
            "bytes_per_idle_session": (held[0] - base) / args.idle,
            "bytes_grown_per_session_rounds_1_to_3": (held[2] - held[0]) / args.idle,
        }

    try:
        writes = write_cost(200_000, 2_000, tmp / "writes")
        for run in range(args.runs):
            ports = {"preflight": free_port(), "echo": free_port()}
            preflight_argv = [
                py,
                "-m",
                "server",
                "--port",
                str(ports["preflight"]),
                "--data-dir",
                str(tmp / f"data-{run}"),
                "--experiment",
                str(ROOT / "bench" / "experiment.py"),
                "--rate-limit",
                "100000",
                *ONE_ADDRESS_IS_MANY,
                "--grace",
                str(GRACE),
            ]
            echo_argv = [py, "-m", "bench.echo", "--port", str(ports["echo"])]
            urls = {server: f"ws://127.0.0.1:{port}/ws" for server, port in ports.items()}
            with started(preflight_argv, ports["preflight"]) as preflight, started(echo_argv, ports["echo"]) as echo:
                if run == 0:
                    for n in range(20):
                        asyncio.run(walk(urls["preflight"], participant_id=f"bench-{n}"))
                    traces[:] = load([tmp / "data-0"])
                # both servers wait on the same core; each figure is taken from one, then at once from the other
                # (which goes first alternates by run), so a drift of the machine's speed hits both alike
                order = ("preflight", "echo") if run % 2 == 0 else ("echo", "preflight")
                pids = {"preflight": preflight.pid, "echo": echo.pid}
                steps = {server: figures(server, urls[server], pids[server], run) for server in order}
                for pair in zip(*steps.values(), strict=True):
                    for server, measure in zip(order, pair, strict=True):
                        add(server, measure())
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, writes, args)


def report(results: dict[str, dict[str, list[float]]], writes: dict[str, float], args: argparse.Namespace) -> None:
    med = {s: {k: statistics.median(v) for k, v in r.items()} for s, r in results.items()}
    p, e = med["preflight"], med["echo"]
    print(
        f"python {sys.version.split()[0]}; {os.cpu_count()} cpus; servers pinned to cpu {SERVER_CPU}, client to "
        f"cpu {CLIENT_CPU}; medians of {args.runs} runs; {args.sessions} replayed sessions per figure; "
        f"memory from one run of {args.idle} idle sessions"
    )
    print("| figure | Preflight | echo | ratio | paired ratio |")
    print("|---|---:|---:|---:|---:|")
    for key in sorted(p):
        if key in e:
            ratio = p[key] / e[key] if e[key] else float("nan")
            pairs = [a / b for a, b in zip(results["preflight"][key], results["echo"][key], strict=True) if b]
            paired = statistics.median(pairs) if pairs else float("nan")
            print(f"| {key} | {p[key]:,.2f} | {e[key]:,.2f} | {ratio:.2f} | {paired:.2f} |")
    print(
        f"recorded frame write: p50 {writes['p50_us']:.1f} µs, p99 {writes['p99_us']:.1f} µs, "
        f"p99.9 {writes['p999_us']:.1f} µs, max {writes['max_us']:.0f} µs"
    )
    print("raw:", {s: {k: [round(x, 2) for x in v] for k, v in r.items()} for s, r in results.items()})


if __name__ == "__main__":
    main()
