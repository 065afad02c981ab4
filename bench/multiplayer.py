"""Concurrent 2-player matches at 10 fps on one server process, against a plain Tornado relay in the same run.

Run: .venv/bin/python -m bench.multiplayer [--runs 3] [--matches 10,50,100,200] [--window 8]

For each number of matches N, each run starts a fresh server (`python -m server` with
`bench/multiplayer_experiment.py`, or `bench/relay.py`) pinned to one core, and a client process pinned to
the other that plays 2N simulated players (`client.participant.walk` in lockstep for Preflight, the same
`client.lockstep.Lockstep` over a bare socket for the relay). Once every player has received a few frames,
the server's CPU time (/proc/<pid>/stat) is read over a fixed window, and every frame's arrival is stamped
at the client. Runs are interleaved (Preflight and relay alternate which goes first); figures are medians.

* CPU per relayed frame: server CPU in the window / frame messages delivered to players in it.
* jitter: the interval between a player's consecutive frames minus 100 ms (p99 over every interval).
* behind: how far a frame arrives behind its player's own schedule (first frame + f × 100 ms), p99.
* a process holds N matches while the median interval stays ≤ 110 ms and frames are not late
  (p99 behind ≤ 100 ms, one frame).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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

from bench.server import CLIENT_CPU, cpu_seconds, started
from client.harness import ONE_ADDRESS_IS_MANY, ROOT, free_port
from client.lockstep import Lockstep
from client.participant import ProtocolClient, walk
from client.stats import percentile
from server.store import read_records

PERIOD = 0.1  # 10 fps
WARM_FRAMES = 5  # every player has received this many frames before the window opens
SETUP_S = 120.0  # bound on connecting, matching and warming up
SLIP_INTERVAL_MS = 110.0
LATE_MS = 100.0
ENDLESS = 10**9  # frames a benchmark player plays: it is stopped at the end of the window


# -- the client process ------------------------------------------------------------------------


async def preflight_player(url: str, stamps: list[tuple[float, int]]) -> None:
    def stamp(message: dict[str, Any]) -> None:
        if message["type"] == "frame":
            stamps.append((time.monotonic(), message["f"]))

    await walk(url, frames=ENDLESS, timeout=60.0, on_message=stamp)


async def relay_player(url: str, stamps: list[tuple[float, int]]) -> None:
    client = await ProtocolClient.connect(url, timeout=60.0)
    player = Lockstep(ENDLESS)
    try:
        while True:
            message = await client.recv()
            if message is None:
                return
            if message["type"] == "frame":
                stamps.append((time.monotonic(), message["f"]))
                out = player.on_frame(message)
            elif message["type"] == "match":
                out = player.on_match(message)
            else:
                out = []
            for reply in out:
                await client.send(reply)
    finally:
        client.close()


async def relay_stats(url: str, since: float) -> dict[str, Any]:
    from tornado.httpclient import AsyncHTTPClient

    stats_url = url.replace("ws://", "http://").replace("/ws", f"/stats?since={since}")
    response = await AsyncHTTPClient().fetch(stats_url, request_timeout=30)
    return dict(json.loads(response.body))


async def play(kind: str, url: str, pid: int, matches: int, window: float, profile: bool) -> dict[str, Any]:
    """2N players, a CPU window once all are playing, then every stamp turned into figures."""
    stamps: list[list[tuple[float, int]]] = [[] for _ in range(2 * matches)]
    one = preflight_player if kind == "preflight" else relay_player
    tasks = [asyncio.ensure_future(one(url, s)) for s in stamps]
    deadline = time.monotonic() + SETUP_S
    while min(len(s) for s in stamps) < WARM_FRAMES and time.monotonic() < deadline:
        if any(t.done() for t in tasks):
            break
        await asyncio.sleep(0.05)
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    playing = sum(len(s) >= WARM_FRAMES for s in stamps)
    if profile:
        os.kill(pid, signal.SIGUSR1)  # bench/profiled.py: profile from here
    client0 = resource.getrusage(resource.RUSAGE_SELF)
    t0, cpu0 = time.monotonic(), cpu_seconds(pid)
    await asyncio.sleep(window)
    t1, cpu1 = time.monotonic(), cpu_seconds(pid)
    client1 = resource.getrusage(resource.RUSAGE_SELF)
    if profile:
        os.kill(pid, signal.SIGUSR2)  # ... to here, and write the profile
    after = await relay_stats(url, t0) if kind == "relay" else {}
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=30)
    intervals: list[float] = []
    behind: list[float] = []
    delivered = 0
    for s in stamps:
        inside = [(t, f) for t, f in s if t0 <= t <= t1]
        delivered += len(inside)
        for (ta, fa), (tb, fb) in itertools.pairwise(inside):
            if fb == fa + 1:
                intervals.append(tb - ta)
        if inside:
            offsets = [t - f * PERIOD for t, f in inside]
            low = min(offsets)
            behind += [o - low for o in offsets]
    client_cpu = client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime
    return {
        "kind": kind,
        "matches": matches,
        "playing": playing,
        "errors": [repr(t.exception())[:200] for t in failed[:3]],
        "t0": t0,
        "t1": t1,
        "load_1min": os.getloadavg()[0],  # the shared machine's load average at the window's end
        "window_s": t1 - t0,
        "server_cpu_s": cpu1 - cpu0,
        "server_busy": (cpu1 - cpu0) / (t1 - t0),
        "client_busy": client_cpu / (t1 - t0),
        "delivered": delivered,
        "client_median_interval_ms": statistics.median(intervals) * 1000 if intervals else None,
        "client_p99_jitter_ms": (percentile(sorted(intervals), 99) - PERIOD) * 1000 if intervals else None,
        "client_p99_behind_ms": percentile(sorted(behind), 99) * 1000 if behind else None,
        "relay_ticks": [(m, t, f) for m, t, f in after.get("ticks", []) if t0 <= t <= t1],
    }


def ticks_of_matches(data: Path, t0: float, t1: float) -> list[tuple[str, float, int]]:
    """Every frame a Preflight match closed in the window, from the canonical logs (server time)."""
    out = []
    for path in sorted((data / "matches").glob("*.msgpack")):
        for record in read_records(path):
            if record.get("kind") == "frame" and t0 <= record["t"] <= t1:
                out.append((path.stem, record["t"], record["f"]))
    return out


def tick_figures(ticks: list[tuple[Any, float, int]], players: int = 2) -> dict[str, Any]:
    """The server's own tick: frames sent, the interval between a match's frames, how far behind schedule."""
    per: dict[Any, list[tuple[float, int]]] = {}
    for match, t, f in ticks:
        per.setdefault(match, []).append((t, f))
    intervals: list[float] = []
    behind: list[float] = []
    for frames in per.values():
        frames.sort(key=lambda x: x[1])
        intervals += [tb - ta for (ta, fa), (tb, fb) in itertools.pairwise(frames) if fb == fa + 1]
        offsets = [t - f * PERIOD for t, f in frames]
        behind += [o - min(offsets) for o in offsets]
    return {
        "sent": players * len(ticks),
        "median_interval_ms": statistics.median(intervals) * 1000 if intervals else None,
        "p99_jitter_ms": (percentile(sorted(intervals), 99) - PERIOD) * 1000 if intervals else None,
        "p99_behind_ms": percentile(sorted(behind), 99) * 1000 if behind else None,
    }


def client_main(args: argparse.Namespace) -> None:
    result = asyncio.run(play(args.kind, args.url, args.pid, args.n, args.window, args.profile))
    print(json.dumps(result), flush=True)


# -- the benchmark --------------------------------------------------------------------------


def server_argv(kind: str, port: int, data: Path, profile: Path | None) -> list[str]:
    py = sys.executable
    if kind == "relay":
        return [py, "-m", "bench.relay", "--port", str(port)]
    prefix = [py, "-m", "bench.profiled", str(profile)] if profile else [py, "-m", "server"]
    return [
        *prefix,
        "--port",
        str(port),
        "--data-dir",
        str(data),
        "--experiment",
        str(ROOT / "bench" / "multiplayer_experiment.py"),
        "--rate-limit",
        "100000",
        *ONE_ADDRESS_IS_MANY,
        "--grace",
        "2",
    ]


def trial(kind: str, matches: int, window: float, tmp: Path, profile: Path | None = None) -> dict[str, Any]:
    port = free_port()
    data = tmp / f"data-{kind}-{matches}-{time.monotonic_ns()}"
    with started(server_argv(kind, port, data, profile), port) as p:
        argv = [sys.executable, "-m", "bench.multiplayer", "client", "--kind", kind]
        argv += ["--url", f"ws://127.0.0.1:{port}/ws", "--pid", str(p.pid), "--n", str(matches)]
        argv += ["--window", str(window), *(["--profile"] if profile else [])]
        client = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        if len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(client.pid, {CLIENT_CPU})
        out, _ = client.communicate(timeout=SETUP_S + window + 120)
        figures = dict(json.loads(out.strip().splitlines()[-1]))
        ticks = figures.pop("relay_ticks") if kind == "relay" else ticks_of_matches(data, figures["t0"], figures["t1"])
    figures.update(tick_figures(ticks))
    figures["cpu_us_per_frame"] = figures["server_cpu_s"] / figures["sent"] * 1e6 if figures["sent"] else None
    return figures


def slipped(figures: dict[str, Any]) -> bool:
    interval, behind = figures.get("median_interval_ms"), figures.get("p99_behind_ms")
    return interval is None or interval > SLIP_INTERVAL_MS or behind is None or behind > LATE_MS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    c = sub.add_parser("client", help="(internal) the client process of one trial")
    c.add_argument("--kind", choices=("preflight", "relay"), required=True)
    c.add_argument("--url", required=True)
    c.add_argument("--pid", type=int, required=True)
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--window", type=float, required=True)
    c.add_argument("--profile", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--matches", default="10,50,100,200", help="numbers of concurrent matches, comma-separated")
    parser.add_argument("--window", type=float, default=8.0, help="seconds of steady play measured per trial")
    parser.add_argument("--profile", type=int, default=0, help="also profile the server (cProfile) at this N")
    args = parser.parse_args()
    if args.command == "client":
        return client_main(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sizes = [int(n) for n in args.matches.split(",")][:8]  # bounded
    tmp = Path(tempfile.mkdtemp(prefix="preflight-mp-bench-"))
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        for run in range(args.runs):
            for n in sizes:
                order = ("preflight", "relay") if (run + n) % 2 == 0 else ("relay", "preflight")
                for kind in order:
                    figures = trial(kind, n, args.window, tmp)
                    results.setdefault((kind, n), []).append(figures)
                    print(f"run {run + 1} {kind} N={n}: {json.dumps(figures)}", file=sys.stderr, flush=True)
        if args.profile:
            prof = tmp / "server.prof"
            trial("preflight", args.profile, args.window, tmp, profile=prof)
            import pstats

            print(f"\ncProfile of the server over the window, {args.profile} matches, by own time and cumulative:")
            pstats.Stats(str(prof)).sort_stats("tottime").print_stats(30)
            pstats.Stats(str(prof)).sort_stats("cumulative").print_stats(45)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, sizes, args)


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def report(results: dict[tuple[str, int], list[dict[str, Any]]], sizes: list[int], args: argparse.Namespace) -> None:
    print(
        f"python {sys.version.split()[0]}; {os.cpu_count()} cpus (shared); server pinned to one, client to the "
        f"other; medians of {args.runs} interleaved runs; {args.window:g} s window per trial"
    )
    print(
        "| matches | server CPU µs per frame sent: Preflight | relay | ratio | server busy P / R "
        "| tick median interval ms P / R | tick p99 jitter ms P / R | tick p99 behind ms P / R "
        "| at the client: p99 jitter ms P / R | client busy P / R | load average P / R | holds |"
    )
    print("|---:|---:|---:|---:|---|---|---|---|---|---|---|---|")
    held, broken = 0, False  # the largest N before the first that slipped
    for n in sizes:
        p, r = results.get(("preflight", n), []), results.get(("relay", n), [])
        cp, cr = _median(p, "cpu_us_per_frame"), _median(r, "cpu_us_per_frame")
        ratio = cp / cr if cp and cr else None
        med = {k: _median(p, k) for k in ("median_interval_ms", "p99_behind_ms")}
        ok = not slipped(med) and all(x["playing"] == 2 * n for x in p)
        if ok and not broken:
            held = n
        broken = broken or not ok

        def both(key: str, digits: int = 1) -> str:
            return f"{_fmt(_median(p, key), digits)} / {_fmt(_median(r, key), digits)}"

        print(
            f"| {n} | {_fmt(cp)} | {_fmt(cr)} | {_fmt(ratio, 2)} | {both('server_busy', 2)} "
            f"| {both('median_interval_ms')} | {both('p99_jitter_ms')} | {both('p99_behind_ms')} "
            f"| {both('client_p99_jitter_ms')} | {both('client_busy', 2)} | {both('load_1min')} "
            f"| {'yes' if ok else 'no'} |"
        )
    print(f"one process holds {held} matches at 10 fps without the tick slipping (of {', '.join(map(str, sizes))})")
    print("raw:", json.dumps({f"{k}@{n}": v for (k, n), v in results.items()}))


if __name__ == "__main__":
    main()
