"""The game loop and what a game costs the server: tick rate, frame time, page work, server CPU per minute of play.

Run: .venv/bin/python -m bench.game [--runs 3] [--players 20] [--minutes 1]

Browser part (headless Debian Chromium, a fresh context per run): a study whose environment draws 60 shapes a
frame plays 600 ticks at 30 fps with no keys held. From the page:

* tick rate: ticks per second from the steps' own times (`t`, taken in the worker), as a ratio to `fps`;
* frame time: the worker's step + render (`work_ms` of each frame) plus the page's drawing of it, p50/p99,
  against the budget of 1000/fps ms;
* main-thread work per frame: the page's handling of each frame (drawing it and the score), p50/p99.

Server part: `python -m server` (`--rate-limit` lifted, as bench/server.py does) receives `players` protocol
clients that each play `minutes` of a 30 fps game as fast as the server takes it, once as the page sends it
(a `steps` batch of 8 steps, four a second) and once as one message per step (the same steps, 1,800 messages a
minute). Reported: the server's CPU seconds per participant-minute of play for each, and their ratio, in the
same run; medians of `--runs`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from bench.server import cpu_seconds
from client.harness import launch_chromium, records_of, server_process
from client.participant import DESKTOP_CHROMIUM, ProtocolClient
from client.stats import percentile

FPS = 30
TICKS = 600

ENV = '''
class Busy:
    """60 moving shapes a frame and nothing to win: a steady load for the loop."""

    def reset(self, seed):
        self.t = 0
        return [0], {}

    def step(self, action):
        self.t += 1
        return [self.t], 0.0, False, False, {}

    def render(self):
        shapes = [{"kind": "rect", "x": (self.t + 7 * i) % 100, "y": i, "w": 4, "h": 1, "fill": "#2456d6"}
                  for i in range(60)]
        return {"width": 100, "height": 60, "shapes": shapes}


def make():
    return Busy()
'''

STUDY = f"""
from server.experiment import EndScene, Experiment, GymScene, StartScene, StaticScene

experiment = Experiment(name="bench-game", scenes=[
    StartScene(), StaticScene("instructions", "<p>Watch.</p>"),
    GymScene("busy", environment="busy_env:make", keys={{"ArrowUp": 1}}, input="held", fps={FPS},
             max_steps={TICKS}, show_score=True),
    EndScene(completion_code="B"),
])
"""


def write_study(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "busy_env.py").write_text(ENV)
    (folder / "study.py").write_text(STUDY)
    return folder / "study.py"


def play_in_browser(runs: int, tmp: Path) -> list[dict[str, float]]:
    study = write_study(tmp / "study")
    results = []
    with server_process(tmp / "data", "--experiment", str(study)) as (url, _), sync_playwright() as p:
        browser = launch_chromium(p)
        for k in range(runs + 1):  # the first run warms the server and the browser, unmeasured
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            participant = f"bench-game-{k}"
            page.goto(f"{url}?PROLIFIC_PID={participant}")
            for scene in ("start", "instructions"):
                page.wait_for_function(
                    f"window.__preflight?.state?.scene_id === '{scene}' && window.__preflight.state.may_advance",
                    timeout=120_000,
                )
                page.click("#advance")
            page.wait_for_function(
                "window.__preflight.state?.state === 'ready' && window.__preflight.state.scene_id === 'busy'",
                timeout=120_000,
            )
            frames = page.evaluate("window.__preflight.frameTimes")
            context.close()
            steps = [s for r in records_of(tmp / "data", participant) if r["kind"] == "steps" for s in r["steps"]]
            if k == 0:
                continue
            times = [s["t"] for s in steps]
            work = sorted(f[0] + f[1] for f in frames[1:])
            page_ms = sorted(f[1] for f in frames[1:])
            results.append(
                {
                    "tick_rate": (len(times) - 1) / ((times[-1] - times[0]) / 1000) / FPS,
                    "frame_p50": percentile(work, 50),
                    "frame_p99": percentile(work, 99),
                    "page_p50": percentile(page_ms, 50),
                    "page_p99": percentile(page_ms, 99),
                }
            )
            print(f"browser run {k}: {results[-1]}", file=sys.stderr, flush=True)
        browser.close()
    return results


async def play_protocol(url: str, players: int, minutes: float, batched: bool) -> None:
    """`players` participants each walk into the game and send `minutes` of 30 fps steps, then finish."""
    ticks = int(minutes * 60 * FPS)

    async def one(n: int) -> None:
        client = await ProtocolClient.connect(url, timeout=30)
        try:
            await client.send({"type": "hello", "participant_id": f"{'b' if batched else 's'}{n}"})
            await client.send({"type": "screening", "facts": DESKTOP_CHROMIUM})
            await client.send({"type": "preload", "status": "ready", "elapsed_ms": 1})
            await client.until_state("ready")
            await client.send({"type": "advance"})
            await client.send({"type": "advance"})
            await client.until_state("in_game")
            steps = [
                {
                    "episode": 0,
                    "step": s,
                    "action": 1,
                    "reward": 0.0,
                    "terminated": False,
                    "truncated": False,
                    "info": {},
                    "keys": [],
                    "visible": True,
                    "t": 1_800_000_000_000 + 33 * s,
                }
                for s in range(1, ticks + 1)
            ]
            size = 8 if batched else 1
            for i in range(0, ticks, size):
                await client.send({"type": "steps", "steps": steps[i : i + size]})
            await client.send({"type": "game_over", "episodes": 1, "steps": ticks, "total_reward": 0.0})
            await client.until_state("ready")
        finally:
            client.close()

    await asyncio.gather(*(one(n) for n in range(players)))


def server_cost(runs: int, players: int, minutes: float, tmp: Path) -> dict[str, list[float]]:
    study = write_study(tmp / "cost-study")  # no round-trip rule: a saturated server's pings would exclude players
    costs: dict[str, list[float]] = {"batched": [], "per step": []}
    for k in range(runs):
        for batched in (True, False) if k % 2 == 0 else (False, True):
            data = tmp / f"cost-{k}-{batched}"
            with server_process(data, "--rate-limit", "100000", "--experiment", str(study)) as (url, proc):
                ws = url.replace("http://", "ws://") + "ws"
                before = cpu_seconds(proc.pid)
                asyncio.run(play_protocol(ws, players, minutes, batched))
                spent = cpu_seconds(proc.pid) - before
            label = "batched" if batched else "per step"
            costs[label].append(spent / (players * minutes))
            print(
                f"server run {k} {label}: {costs[label][-1] * 1000:.1f} ms CPU per participant-minute",
                file=sys.stderr,
                flush=True,
            )
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.game", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--players", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        browser = play_in_browser(args.runs, tmp)
        costs = server_cost(args.runs, args.players, args.minutes, tmp)
    med = {key: statistics.median(r[key] for r in browser) for key in browser[0]}
    budget = 1000 / FPS
    print(f"{args.runs} runs; medians\n")
    print("| figure | measured | goal |\n| --- | ---: | --- |")
    print(f"| tick rate at {FPS} fps, ratio to fps | {med['tick_rate']:.3f} | within 5% (0.95–1.05) |")
    print(
        f"| frame time (worker step + render + page draw) p50 / p99, ms | {med['frame_p50']:.2f} / "
        f"{med['frame_p99']:.2f} | p99 < {budget:.1f} |"
    )
    print(f"| main-thread work per frame p50 / p99, ms | {med['page_p50']:.2f} / {med['page_p99']:.2f} | p99 < 4 |")
    b, s = statistics.median(costs["batched"]), statistics.median(costs["per step"])
    print(f"| server CPU per participant-minute of play, batched steps, ms | {b * 1000:.1f} | |")
    print(f"| server CPU per participant-minute of play, one message per step, ms | {s * 1000:.1f} | |")
    print(f"| batched / per step | {b / s:.3f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
