"""`kill -9` of the server while many participants play real-time games: nothing lost, nothing twice, in the export.

Run: .venv/bin/python -m bench.crash [--games 200] [--fps 20] [--seconds 20] [--kill-at 8] [--down 1]
Starts `python -m server` on a free port with a fresh data directory, and `--games` participants who each walk to
the game and play it in real time: a step every 1/fps s, sent in numbered `steps` batches every 250 ms as the page
sends them (client/web/python.js), kept until the server's `received` covers them. `--kill-at` seconds after the
last one began playing, the server is killed with SIGKILL and started again `--down` seconds later on the same port
and data directory. The games never stop: while the server is away the steps pile up, and each participant
reconnects with its token and resends what was not confirmed. Once everyone is done, `python -m server export`
is run and every participant's exported steps are compared with the steps it played.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from bench.faults import rss_kb
from client.harness import ONE_ADDRESS_IS_MANY, ROOT, port_of, start_server, stop_server
from client.participant import DESKTOP_CHROMIUM
from client.runner import _closed_is_fine
from server import protocol
from statemachine import FINAL_STATES, IN_GAME

BATCH_S = 0.25  # the page's BATCH_MS
GRACE = 60  # seconds: a restart plus 200 reconnections on 2 shared cores fit well within it


class Player:
    """One participant whose game runs on its own clock, whatever the connection does."""

    def __init__(self, url: str, pid: str, fps: float, seconds: float, deadline: float, resend: bool = True) -> None:
        self.url, self.pid, self.fps, self.seconds, self.deadline = url, pid, fps, seconds, deadline
        self.resend = resend
        self.conn: WebSocketClientConnection | None = None
        self.live = False  # True once a connection's resend is done: new data may go straight out
        self.token: str | None = None
        self.n = 0
        self.pending: dict[int, bytes] = {}
        self.last_seq = 0
        self.played: list[tuple[int, int]] = []  # (episode, step) of every step the game made
        self.reconnects = 0
        self.started_game = asyncio.Event()
        self.games: set[str] = set()
        self.game_tasks: list[asyncio.Future[None]] = []
        self.outcome: str | None = None

    async def send(self, message: dict[str, Any]) -> None:
        if self.conn is not None and self.live:
            # research data waits in `pending`; the rest is sent again from the state after a resume
            with contextlib.suppress(WebSocketClosedError):
                await self.conn.write_message(protocol.encode(message), binary=True)

    async def send_data(self, message: dict[str, Any]) -> None:
        self.n += 1
        self.pending[self.n] = protocol.encode({**message, "n": self.n})
        if self.conn is not None and self.live:
            with contextlib.suppress(WebSocketClosedError):
                await self.conn.write_message(self.pending[self.n], binary=True)

    async def connect(self) -> None:
        """Connect (again, until the deadline), say hello or resume, then resend what is unconfirmed, in order."""
        while True:
            try:
                request = HTTPRequest(self.url, headers={"User-Agent": DESKTOP_CHROMIUM["user_agent"]})
                self.conn = await asyncio.wait_for(websocket_connect(request), 10)
                break
            except Exception:  # refused while the server is down: try again shortly
                if time.monotonic() > self.deadline:
                    raise
                await asyncio.sleep(0.25)
        hello: dict[str, Any] = {"type": "hello"}
        if self.token is None:
            hello["participant_id"] = self.pid
        else:
            hello.update(resume_token=self.token, last_seq=self.last_seq)
        written = [self.conn.write_message(protocol.encode(hello), binary=True)]
        if not self.resend:  # the page before numbered delivery: what was unconfirmed is simply gone
            self.pending.clear()
        for n in sorted(self.pending):  # written at once, so nothing new can slip in between
            written.append(self.conn.write_message(self.pending[n], binary=True))
        for future in written:
            future.add_done_callback(_closed_is_fine)
        self.live = True

    async def run(self) -> None:
        await self.connect()
        acted_on: tuple[Any, ...] = ()
        reported: set[str] = set()
        needs_pyodide = True
        while True:
            assert self.conn is not None
            try:
                frame = await asyncio.wait_for(self.conn.read_message(), 30)
            except TimeoutError:
                frame = None
            if frame is None:  # the server went away: come back with the token
                self.live = False
                self.conn.close()
                self.reconnects += 1
                await self.connect()
                acted_on, reported = (), set()
                continue
            message = protocol.msgpack.unpackb(frame, raw=False)
            kind = message.get("type")
            if kind == "received":
                for n in [n for n in self.pending if n <= message["n"]]:
                    del self.pending[n]
                continue
            self.last_seq = max(self.last_seq, message.get("seq", 0))
            if kind == "experiment_config":
                self.token = message["session_token"]
                needs_pyodide = message["pyodide_config"]["needs_pyodide"]
            elif kind == "error" and message["code"] not in ("not_allowed", "gated"):
                raise RuntimeError(f"{self.pid}: server refused a message: {message}")
            elif kind == "state":
                if message["state"] in FINAL_STATES:
                    self.outcome = message["state"]
                    self.conn.close()
                    return
                regions = message.get("regions") or {}
                if regions.get("screening") == "checking" and "screening" not in reported:
                    reported.add("screening")
                    await self.send({"type": "screening", "facts": DESKTOP_CHROMIUM})
                if needs_pyodide and regions.get("preloading") in ("idle", "loading") and "preload" not in reported:
                    reported.add("preload")
                    if not any(b"preload" in p for p in self.pending.values()):
                        await self.send_data({"type": "preload", "status": "ready", "elapsed_ms": 1})
                situation = (message["state"], message.get("scene_id"), message["may_advance"])
                if situation != acted_on:
                    acted_on = situation
                    if message["state"] == IN_GAME and message.get("scene_id") not in self.games:
                        self.games.add(message.get("scene_id"))
                        self.game_tasks.append(asyncio.ensure_future(self.play()))
                    elif message["state"] != IN_GAME and message["may_advance"]:
                        await self.send({"type": "advance"})
                await self.send({"type": "ack", "seq": self.last_seq})

    async def play(self) -> None:
        """Steps at the game's rate, batched as the page batches them, then `game_over`."""
        self.started_game.set()
        total = int(self.fps * self.seconds)
        batch: list[dict[str, Any]] = []
        began = flushed = time.monotonic()
        for step in range(1, total + 1):
            await asyncio.sleep(max(0.0, began + step / self.fps - time.monotonic()))
            batch.append({"episode": 0, "step": step, "action": step % 4, "reward": -0.01, "terminated": False})
            self.played.append((0, step))
            if time.monotonic() - flushed >= BATCH_S or step == total:
                await self.send_data({"type": "steps", "steps": batch})
                batch, flushed = [], time.monotonic()
        await self.send_data({"type": "game_over", "episodes": 1, "steps": total, "total_reward": -0.01 * total})


async def crash_during_games(url: str, args: argparse.Namespace, restart: Any) -> tuple[list[Player], dict[str, Any]]:
    deadline = time.monotonic() + args.max_seconds
    players = [Player(url, f"rt-{i}", args.fps, args.seconds, deadline, args.resend) for i in range(args.games)]
    tasks = [asyncio.ensure_future(p.run()) for p in players]
    await asyncio.wait_for(asyncio.gather(*(p.started_game.wait() for p in players)), args.max_seconds)
    all_playing = time.monotonic()
    await asyncio.sleep(args.kill_at)
    killed_at = time.monotonic()
    info = await restart(players)
    info["killed_s_after_all_playing"] = round(killed_at - all_playing, 2)
    done, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline - time.monotonic()))
    for task in pending:
        task.cancel()
    info["unfinished_players"] = len(pending)
    info["player_errors"] = [str(t.exception())[:200] for t in done if t.exception() is not None][:5]
    for p in players:
        if p.conn is not None:
            p.conn.close()
    await asyncio.sleep(0.5)
    return players, info


def audit(data: Path, out: Path, players: list[Player]) -> dict[str, Any]:
    """What `python -m server export` holds for each participant, against what each one played."""
    exported = subprocess.run(
        [sys.executable, "-m", "server", "export", "--data-dir", str(data), "--format", "jsonl", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if exported.returncode != 0:
        raise RuntimeError(exported.stderr)
    rows: dict[str, Counter[tuple[int, int]]] = {}
    for line in (out / "steps.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["participant_id"], Counter())[(row["episode"], row["step"])] += 1
    people = [json.loads(line) for line in (out / "participants.jsonl").read_text().splitlines()]
    gaps = sum(1 for line in (out / "events.jsonl").read_text().splitlines() if '"kind": "gap"' in line)
    played = lost = duplicated = 0
    for p in players:
        got = rows.get(p.pid, Counter())
        played += len(p.played)
        lost += sum(1 for s in p.played if got[s] == 0)
        duplicated += sum(n - 1 for n in got.values() if n > 1)
    return {
        "steps_played": played,
        "steps_exported": sum(sum(c.values()) for c in rows.values()),
        "steps_lost": lost,
        "steps_duplicated": duplicated,
        "gap_records": gaps,
        "sessions_exported": len(people),
        "outcomes_exported": dict(Counter(p["outcome"] for p in people)),
        "torn_bytes": sum(int(p["torn_bytes"] or 0) for p in people),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--games", type=int, default=200)
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each game")
    parser.add_argument("--kill-at", type=float, default=8.0, help="seconds after all games began")
    parser.add_argument("--down", type=float, default=1.0, help="seconds between the kill and the restart")
    parser.add_argument("--max-seconds", type=float, default=240.0)
    parser.add_argument(
        "--no-resend", dest="resend", action="store_false", help="drop unconfirmed data on reconnect (the old page)"
    )
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        flags = (*ONE_ADDRESS_IS_MANY, "--grace", str(GRACE), "--no-precompressed")
        flags += ("--experiment", str(Path(__file__).with_name("experiment.py")))
        proc, url = start_server(data, *flags)
        port = port_of(url)
        procs = [proc]

        async def restart(players: list[Player]) -> dict[str, Any]:
            info = {"rss_kb_before_kill": rss_kb(procs[-1].pid)}
            procs[-1].send_signal(signal.SIGKILL)
            info["steps_unconfirmed_at_kill"] = sum(
                len(m.get("steps", ())) for p in players for m in map(protocol.msgpack.unpackb, p.pending.values())
            )
            procs[-1].wait(timeout=10)
            await asyncio.sleep(args.down)
            started = time.monotonic()
            back, _ = await asyncio.get_running_loop().run_in_executor(
                None, lambda: start_server(data, *flags, port=port)
            )
            procs.append(back)
            info["restart_s"] = round(time.monotonic() - started, 2)
            return info

        try:
            players, info = asyncio.run(crash_during_games(url.replace("http", "ws") + "ws", args, restart))
            info["server_alive_after"] = procs[-1].poll() is None
        finally:
            for p in procs:
                stop_server(p)
        report = {
            "games": args.games,
            "fps": args.fps,
            "game_seconds": args.seconds,
            **info,
            "completed_by_players": sum(p.outcome == "completed" for p in players),
            "reconnects": sum(p.reconnects for p in players),
            "players_reconnected": sum(p.reconnects > 0 for p in players),
            **audit(data, Path(tmp) / "export", players),
        }
    print(json.dumps(report, indent=2))
    ok = report["steps_lost"] == 0 and report["steps_duplicated"] == 0 and report["completed_by_players"] == args.games
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
