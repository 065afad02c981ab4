"""Preflight next to its predecessor, interactive-gym 0.1.1, on the same participant flow in one run.

Run: .venv/bin/python -m bench.predecessor [--venv /work/tmp/igvenv] [--rounds 3] [--sizes 200 1000]

The predecessor (Flask-SocketIO on eventlet) runs from its own venv, which this benchmark never creates or changes;
without it the benchmark says how to make it and stops (VENV_COMMAND). Each participant, on both servers:
page GET, connect, register (`hello` / `register_subject`), screening and preload reported (the predecessor's page
reports neither; its only check is a `ping` round trip), one advance timed until the next scene arrives, close.
Preflight runs the built-in example without its round-trip-time rule (`python -m server --experiment
bench/experiment.py`: on a loaded machine some participants measure over the example's 1 s and are rightly
excluded), walked by `ProtocolClient` in this process; the predecessor
runs `bench/predecessor_server.py` (a start scene, one static scene, an end scene), walked by
`bench/predecessor_client.py` over Socket.IO's WebSocket transport in a process of its own. A third server, the
plain Tornado + msgpack one of `bench/echo.py` (the page's file at `/`, every frame sent back), gets Preflight's
participant's nine messages one round trip at a time: what any Tornado server spends on those round trips, so the
floor under Preflight's figure and the most that "cheaper than the predecessor" can reach on them.
Every round starts a fresh server of each kind (the order rotates), pinned to one core with the clients on the
other, warms it with a few participants, then measures: server CPU (utime + stime from /proc) per participant,
the advance's round trip p50, and server RSS growth per participant (held after the participants left, and peak).
Figures are medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient

from bench.server import CLIENT_CPU, cpu_seconds, rss_bytes, started
from client.harness import ONE_ADDRESS_IS_MANY, ROOT, free_port
from client.participant import DESKTOP_CHROMIUM, ProtocolClient
from client.stats import percentile

DEFAULT_VENV = Path(os.environ.get("PREDECESSOR_VENV", "/work/tmp/igvenv"))
VENV_COMMAND = (
    "python3 -m venv {venv} && {venv}/bin/pip install 'interactive-gym[server]==0.1.1' gymnasium "
    "'python-socketio[client]' aiohttp"
)
"""interactive-gym 0.1.1 imports gymnasium without declaring it; the client needs socketio[client] and aiohttp."""
GRACE = 2.0  # Preflight keeps a closed session this long for a resume; the settle below lets every one of them end
SETTLE = GRACE + 1.5
WARM = 10
PREFLIGHT, PREDECESSOR, PLAIN = "Preflight", "interactive-gym 0.1.1", "plain Tornado"
KINDS = (PREFLIGHT, PREDECESSOR, PLAIN)
PLAIN_WALK: tuple[dict[str, Any], ...] = (
    {"type": "hello"},
    {"type": "ack", "seq": 3},
    {"type": "screening", "facts": DESKTOP_CHROMIUM},
    {"type": "ack", "seq": 4},
    {"type": "preload", "status": "loading", "stage": "runtime", "elapsed_ms": 0, "n": 1},
    {"type": "preload", "status": "ready", "elapsed_ms": 1, "n": 2},
    {"type": "ack", "seq": 5},
    {"type": "ack", "seq": 6},
    {"type": "advance"},
)
"""The messages Preflight's participant sends in `preflight_participant` (five, and four acks), last the timed one."""


def venv_problem(venv: Path) -> str | None:
    """Why the predecessor's venv cannot run the benchmark, or None."""
    python = venv / "bin" / "python"
    if not python.exists():
        return f"no {python}"
    check = (
        "import importlib.metadata as m, interactive_gym.server.app, socketio, aiohttp;"
        "v = m.version('interactive-gym'); assert v == '0.1.1', v"
    )
    try:
        done = subprocess.run(
            [str(python), "-c", check], capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir()
        )
    except subprocess.TimeoutExpired:
        return f"{python} took over 120 s to import interactive_gym"
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        return f"{python} cannot run it: {last}"
    return None


def client_cpu_seconds() -> float:
    """CPU of this process (Preflight's client) and of its ended children (the predecessor's client)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def reset_peak(pid: int) -> None:
    """Start the process's peak RSS (VmHWM) again from its current RSS, so the peak is the measurement's own."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


async def page_and_socket(base: str, timeout: float) -> ProtocolClient:
    """A participant's first two steps on either Tornado server: the page at `/`, then the socket at `/ws`."""
    page = await AsyncHTTPClient().fetch(
        f"http://{base}/", headers={"User-Agent": DESKTOP_CHROMIUM["user_agent"]}, request_timeout=timeout
    )
    if page.code != 200:
        raise RuntimeError(f"page GET answered {page.code}")
    return await ProtocolClient.connect(f"ws://{base}/ws", timeout=timeout)


async def preflight_participant(base: str, timeout: float, round_trips: list[float]) -> None:
    """The walk client's steps up to the first advance: hello, screening, preload loading and ready, advance."""
    client = await page_and_socket(base, timeout)
    try:
        await client.send({"type": "hello"})
        reported: set[str] = set()
        advanced_at = None
        for _ in range(50):  # the walk to the second scene is 8 messages; anything near 50 is a bug
            message = await client.recv()
            if message is None:
                raise ConnectionError(f"closed by server ({client.conn.close_code} {client.conn.close_reason})")
            if message["type"] == "activate_scene" and advanced_at is not None:
                if message["scene_id"] == "instructions":
                    round_trips.append((time.perf_counter() - advanced_at) * 1000)
                    return
            elif message["type"] == "error":
                raise RuntimeError(f"server refused a message: {message}")
            elif message["type"] == "state":
                regions = message.get("regions") or {}
                if regions.get("screening") == "checking" and "screening" not in reported:
                    reported.add("screening")
                    await client.send({"type": "screening", "facts": DESKTOP_CHROMIUM})
                if regions.get("preloading") in ("idle", "loading") and "preload" not in reported:
                    reported.add("preload")
                    await client.send_data(
                        {"type": "preload", "status": "loading", "stage": "runtime", "elapsed_ms": 0}
                    )
                    await client.send_data({"type": "preload", "status": "ready", "elapsed_ms": 1})
                if message["state"] != "preflight" and message["state"] != "ready":
                    raise RuntimeError(f"unexpected state {message['state']} ({message.get('reason')})")
                if message["may_advance"] and advanced_at is None:
                    advanced_at = time.perf_counter()
                    await client.send({"type": "advance"})
                await client.ack()
        raise RuntimeError("no second scene within 50 messages")
    finally:
        await client.aclose()


async def plain_participant(base: str, timeout: float, round_trips: list[float]) -> None:
    """Preflight's participant's page GET and messages to a server that sends each message back, one at a time."""
    client = await page_and_socket(base, timeout)
    try:
        for message in PLAIN_WALK:
            sent_at = time.perf_counter()
            await client.send(message)
            if await client.recv() != message:
                raise RuntimeError(f"the plain server did not send back {message['type']}")
        round_trips.append((time.perf_counter() - sent_at) * 1000)
    finally:
        await client.aclose()


async def walk_flow(kind: str, base: str, participants: int, concurrency: int, timeout: float) -> dict[str, Any]:
    participant = preflight_participant if kind == PREFLIGHT else plain_participant
    AsyncHTTPClient.configure(None, max_clients=concurrency)
    slots = asyncio.Semaphore(concurrency)
    round_trips: list[float] = []
    errors: list[str] = []

    async def one() -> None:
        async with slots:
            try:
                await asyncio.wait_for(participant(base, timeout, round_trips), timeout * 4)
            except Exception as exc:  # a failed participant is counted, not fatal
                errors.append(f"{type(exc).__name__}: {exc}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(participants)))
    return {
        "ok": len(round_trips),
        "failed": len(errors),
        "errors": errors[:5],
        "advance_ms": round_trips,
        "seconds": time.perf_counter() - t0,
    }


async def page_gets(base: str, predecessor: bool, n: int, concurrency: int, timeout: float) -> None:
    """`n` GETs of a participant's page, `concurrency` at once: `/`, or the predecessor's `/<subject_id>`
    (which builds that participant's stager, as its page GET does in the flow)."""
    AsyncHTTPClient.configure(None, max_clients=concurrency)
    http = AsyncHTTPClient()
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            path = f"/bench-page-{i}" if predecessor else "/"
            page = await http.fetch(
                f"http://{base}{path}", headers={"User-Agent": DESKTOP_CHROMIUM["user_agent"]}, request_timeout=timeout
            )
            if page.code != 200:
                raise RuntimeError(f"page GET answered {page.code}")

    await asyncio.gather(*(one(i) for i in range(n)))


def predecessor_flow(
    python: Path, base: str, participants: int, concurrency: int, timeout: float, pings: int
) -> dict[str, Any]:
    argv = [
        str(python),
        str(ROOT / "bench" / "predecessor_client.py"),
        "--url",
        f"http://{base}",
        "--participants",
        str(participants),
        "--concurrency",
        str(concurrency),
        "--timeout",
        str(timeout),
        "--pings",
        str(pings),
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=max(120.0, participants * timeout / concurrency * 4)
    )
    if done.returncode != 0:
        raise RuntimeError(f"the predecessor's client failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(kind: str, args: argparse.Namespace, participants: int, tmp: Path, python: Path) -> dict[str, Any]:
    port = free_port()
    base = f"127.0.0.1:{port}"
    workdir = tmp / f"{kind.split()[0]}-{port}"
    if kind == PREFLIGHT:
        argv = [
            sys.executable,
            "-m",
            "server",
            "--port",
            str(port),
            "--data-dir",
            str(workdir / "data"),
            "--experiment",
            str(ROOT / "bench" / "experiment.py"),
            *ONE_ADDRESS_IS_MANY,
            "--grace",
            str(GRACE),
        ]
    elif kind == PLAIN:
        argv = [sys.executable, "-m", "bench.echo", "--port", str(port)]
    else:
        argv = [
            str(python),
            str(ROOT / "bench" / "predecessor_server.py"),
            "--port",
            str(port),
            "--workdir",
            str(workdir),
        ]

    def flow(n: int) -> dict[str, Any]:
        if kind == PREDECESSOR:
            return predecessor_flow(python, base, n, args.concurrency, args.timeout, args.pings)
        return asyncio.run(walk_flow(kind, base, n, args.concurrency, args.timeout))

    with started(argv, port) as proc:
        warm = flow(WARM)
        if warm["failed"]:
            raise RuntimeError(f"{kind}: warm-up failed: {warm['errors']}")
        time.sleep(SETTLE)
        reset_peak(proc.pid)
        cpu0, rss0, peak0 = cpu_seconds(proc.pid), rss_bytes(proc.pid), peak_rss_bytes(proc.pid)
        client0 = client_cpu_seconds()
        result = flow(participants)
        client_cpu = client_cpu_seconds() - client0
        time.sleep(SETTLE)  # closes handled, Preflight's closed sessions past their grace
        cpu1, rss1, peak1 = cpu_seconds(proc.pid), rss_bytes(proc.pid), peak_rss_bytes(proc.pid)
        # the page GET alone, with the same client for both: how much of the participant's cost is the page
        cpu2 = cpu_seconds(proc.pid)
        asyncio.run(page_gets(base, kind == PREDECESSOR, participants, args.concurrency, args.timeout))
        page_cpu = cpu_seconds(proc.pid) - cpu2
    shutil.rmtree(workdir, ignore_errors=True)
    if result["failed"]:
        raise RuntimeError(f"{kind}: {result['failed']} of {participants} participants failed: {result['errors']}")
    return {
        "cpu_ms": (cpu1 - cpu0) / participants * 1000,
        "advance_p50_ms": percentile(sorted(result["advance_ms"]), 50),
        "held_kb": (rss1 - rss0) / participants / 1024,
        "peak_kb": (peak1 - peak0) / participants / 1024,
        "page_cpu_ms": page_cpu / participants * 1000,
        "seconds": result["seconds"],
        "client_busy": client_cpu / result["seconds"],
    }


FIGURES = (
    ("cpu_ms", "server CPU ms per participant"),
    ("advance_p50_ms", "advance round trip p50 ms"),
    ("held_kb", "RSS held after, KB per participant"),
    ("peak_kb", "peak RSS growth, KB per participant"),
    ("page_cpu_ms", "of which alone: server CPU ms per page GET"),
    ("seconds", "wall seconds for the participants"),
    ("client_busy", "client CPU / wall (1.0: the client's core is full)"),
)


def report(
    results: dict[tuple[int, str], list[dict[str, float]]], args: argparse.Namespace, load: tuple[float, float]
) -> None:
    print(
        f"python {sys.version.split()[0]}; {os.cpu_count()} cpus; servers pinned to one core, clients to the other; "
        f"concurrency {args.concurrency}; medians of {args.rounds} rotating rounds; "
        f"1-min load average {load[0]:.1f} at the start, {load[1]:.1f} at the end"
    )
    print(
        f"| participants | figure | {PREFLIGHT} | {PREDECESSOR} | {PLAIN} "
        "| predecessor / Preflight | predecessor / plain |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")

    def median(size: int, kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[size, kind])

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b > 0 else "n/a"

    for size in args.sizes:
        for key, label in FIGURES:
            p, q, e = (median(size, kind, key) for kind in KINDS)
            bold = "**" if key == "cpu_ms" else ""
            print(
                f"| {size:,} | {label} | {p:,.2f} | {q:,.2f} | {e:,.2f} "
                f"| {bold}{ratio(q, p)}{bold} | {bold}{ratio(q, e)}{bold} |"
            )
    for size in args.sizes:
        p, q, e = (median(size, kind, "cpu_ms") for kind in KINDS)
        verdict = "met" if q >= 3 * p else "not met"
        print(
            f"{size:,} participants: Preflight {ratio(q, p)}x cheaper in server CPU per participant "
            f"(goal >= 3x: {verdict}); the plain server on the same round trips {ratio(q, e)}x, "
            f"Preflight / plain {ratio(p, e)}x"
        )
    raw = {
        f"{kind} @{size}": {k: [round(r[k], 2) for r in rs] for k, _ in FIGURES} for (size, kind), rs in results.items()
    }
    print("raw:", json.dumps(raw))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the predecessor's venv (see VENV_COMMAND)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000], help="participants per measurement")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for each wait of a participant")
    parser.add_argument("--pings", type=int, default=1, help="the predecessor's ping/pong round trips (its screening)")
    args = parser.parse_args()
    problem = venv_problem(args.venv)
    if problem:
        print(
            f"bench.predecessor skipped: {problem}.\nCreate the predecessor's venv (PyPI only) with:\n  "
            + VENV_COMMAND.format(venv=args.venv)
            + "\nor point --venv / PREDECESSOR_VENV at one.",
            file=sys.stderr,
        )
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {CLIENT_CPU})  # the predecessor's client process inherits it
    python = args.venv / "bin" / "python"
    tmp = Path(tempfile.mkdtemp(prefix="preflight-predecessor-"))
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    load0 = os.getloadavg()[0]
    try:
        for round_ in range(args.rounds):
            for i, size in enumerate(args.sizes):
                first = (round_ + i) % len(KINDS)
                order = KINDS[first:] + KINDS[:first]
                for kind in order:
                    figures = measure(kind, args, size, tmp, python)
                    results.setdefault((size, kind), []).append(figures)
                    print(
                        f"round {round_ + 1}/{args.rounds} {size} {kind}: "
                        + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()),
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, args, (load0, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
