"""Load and faults together: many participants in flight while some connections are cut and come back.

Run: .venv/bin/python -m bench.faults [--sessions 1000] [--drop 0.1] [--concurrency 1000]
Starts `python -m server` on a free port with a fresh data directory, walks every participant with
`client.participant.walk` (a dropped one loses its connection after a random message and returns with its
token), then reads every session's records back and counts what is missing. Server memory is read from
/proc before the faulty round and after a second one, so growth per round shows whether ended sessions leak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import secrets
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from client.harness import ONE_ADDRESS_IS_MANY, sessions_by_participant, start_server, stop_server
from client.participant import walk

STEPS = 3
GRACE = 10  # seconds; a 1,000-participant crowd on 2 shared cores takes seconds to reconnect
TOKEN = secrets.token_urlsafe(24)


def live_sessions(url: str) -> int:
    request = urllib.request.Request(f"{url}admin/api/counts", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["live"]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def round_of(
    url: str, prefix: str, sessions: int, drop: float, concurrency: int, rng: random.Random, deadline: float
) -> tuple[Counter, dict[str, int | None]]:
    gate = asyncio.Semaphore(concurrency)
    outcomes: Counter = Counter()
    failures: list[str] = []
    plan = {f"{prefix}-{n}": (rng.randint(2, 12) if rng.random() < drop else None) for n in range(sessions)}

    async def one(pid: str, drop_after: int | None) -> None:
        async with gate:
            try:
                end = await asyncio.wait_for(
                    walk(
                        url,
                        participant_id=pid,
                        steps=STEPS,
                        timeout=30,
                        drop_after=drop_after,
                        away=rng.uniform(0, 0.5),
                    ),
                    max(1.0, deadline - time.monotonic()),
                )
                outcomes[end["outcome"]] += 1
            except Exception as exc:  # counted, not raised: the report says what failed and how
                outcomes[f"failed:{type(exc).__name__}"] += 1
                failures.append(f"{pid} (drop after {drop_after}): {exc}"[:300])

    await asyncio.gather(*(one(pid, d) for pid, d in plan.items()))
    for line in failures[:5]:
        print("failed:", line, file=sys.stderr)
    return outcomes, plan


def audit(data: Path, plan: dict[str, int | None]) -> dict[str, int]:
    """Every participant's records: begin, each game step exactly once, the completion; missing ones are lost."""
    found = {pid: sessions[-1] for pid, sessions in sessions_by_participant(data).items() if pid in plan}
    lost = resumed = duplicated = abandoned = 0
    for pid in plan:
        records = found.get(pid)
        if records is None:
            lost += 1
            continue
        steps = Counter(r["data"]["step"] for r in records if r["kind"] == "game_event")
        lost += sum(1 for s in range(STEPS) if steps[s] == 0)
        duplicated += sum(n - 1 for n in steps.values() if n > 1)
        lost += not any(r["kind"] == "transition" and r["dest"] == "completed" for r in records)
        resumed += any(r["kind"] == "resumed" for r in records)
        abandoned += any(r["kind"] == "closed" and r["outcome"] == "abandoned" for r in records)
    return {
        "records_lost": lost,
        "duplicated": duplicated,
        "resumed": resumed,
        "abandoned": abandoned,
        "sessions_on_disk": len(found),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--drop", type=float, default=0.1, help="fraction of participants whose connection is cut")
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        proc, url = start_server(
            data,
            "--rate-limit",
            "1000",
            *ONE_ADDRESS_IS_MANY,
            "--grace",
            str(GRACE),
            f"--admin-token={TOKEN}",  # one argument: a token may begin with "-"
            "--experiment",
            str(Path(__file__).with_name("experiment.py")),
        )
        ws = url.replace("http", "ws") + "ws"
        try:
            deadline = time.monotonic() + args.max_seconds
            asyncio.run(round_of(ws, "warm", args.sessions, 0.0, args.concurrency, rng, deadline))
            time.sleep(GRACE + 1)  # finished sessions stay resumable for --grace seconds
            before = rss_kb(proc.pid)
            started = time.monotonic()
            outcomes, plan = asyncio.run(
                round_of(ws, "fault", args.sessions, args.drop, args.concurrency, rng, deadline)
            )
            took = time.monotonic() - started
            time.sleep(GRACE + 1)
            after = rss_kb(proc.pid)
            live_after = live_sessions(url)
            asyncio.run(round_of(ws, "again", args.sessions, args.drop, args.concurrency, rng, deadline))
            time.sleep(GRACE + 1)
            after_again = rss_kb(proc.pid)
            alive = proc.poll() is None
        finally:
            stop_server(proc)
        report = {
            "sessions": args.sessions,
            "dropped": sum(1 for d in plan.values() if d is not None),
            "outcomes": dict(outcomes),
            **audit(data, plan),
            "seconds": round(took, 2),
            "server_alive": alive,
            "rss_kb_before": before,
            "rss_kb_after": after,
            "rss_kb_after_another_round": after_again,
            "live_sessions_after": live_after,
        }
    print(json.dumps(report, indent=2))
    return 0 if report["records_lost"] == 0 and alive and outcomes["completed"] == args.sessions else 1


if __name__ == "__main__":
    sys.exit(main())
