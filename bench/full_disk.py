"""A data directory on a small tmpfs filling mid-study: completed stays completed, newcomers refused, then recovery.

Run (as root, it mounts a tmpfs): .venv/bin/python -m bench.full_disk [--size 4m] [--filler-kb 2048] [--wave 10]
Mounts a tmpfs of `--size`, puts a filler file of `--filler-kb` on it (the space an operator can free later) and
starts `python -m server` with its data directory there. A stream of participants, `--wave` at a time, walks the
study (`--steps` game steps each) until the study's own records fill the disk and a newcomer is refused (those in
flight carry on); two waves of `--wave` then meet the full disk; then the filler is deleted, the time until the
server writes again is measured, and two more waves walk. Finally `python -m server export` is run: every
participant who got the completion code must be exported as `completed`, and no refused one may have a session.
The tmpfs is unmounted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from bench.faults import rss_kb
from client.harness import ONE_ADDRESS_IS_MANY, ROOT, start_server, stop_server
from client.participant import walk

TOKEN = secrets.token_urlsafe(24)


def storage(url: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{url}admin/api/counts", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["storage"]


async def one(ws: str, pid: str, steps: int) -> str:
    """`completed`, `refused:<code>:<close code>` or `failed:<what>`."""
    try:
        end = await asyncio.wait_for(walk(ws, participant_id=pid, steps=steps, timeout=20), 60)
        return str(end["outcome"])
    except ConnectionError as exc:
        code = re.search(r"'code': '(\w+)'", str(exc))
        close = re.search(r"closed by server \((\d+|None)", str(exc))
        if code:
            return f"refused:{code.group(1)}:{close.group(1) if close else '?'}"
        return f"failed:{str(exc)[:80]}"
    except Exception as exc:  # counted, not raised: the report says what failed
        return f"failed:{type(exc).__name__}:{str(exc)[:80]}"


async def waves(ws: str, prefix: str, count: int, wave: int, steps: int, outcomes: dict[str, str]) -> Counter[str]:
    seen: Counter[str] = Counter()
    for w in range(count):
        pids = [f"{prefix}-{w}-{i}" for i in range(wave)]
        for pid, outcome in zip(pids, await asyncio.gather(*(one(ws, p, steps) for p in pids)), strict=True):
            outcomes[pid] = outcome
            seen[outcome] += 1
    return seen


async def study(url: str, disk: Path, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    ws = url.replace("http", "ws") + "ws"
    outcomes: dict[str, str] = {}
    report: dict[str, Any] = {}
    filling: Counter[str] = Counter()
    gate, full = asyncio.Semaphore(args.wave), asyncio.Event()
    spans: dict[str, tuple[float, float]] = {}

    async def newcomer(n: int) -> None:
        """A steady stream, `--wave` at a time, until the first refusal; those in flight then carry on."""
        async with gate:
            if not full.is_set():
                began = time.time()
                outcomes[f"fill-{n}"] = outcome = await one(ws, f"fill-{n}", args.steps)
                spans[f"fill-{n}"] = (began, time.time())
                filling[outcome] += 1
                if outcome.startswith("refused"):
                    full.set()

    await asyncio.gather(*(newcomer(n) for n in range(args.max_participants)))
    report["before_full"] = dict(filling)
    report["participants_before_refusals"] = sum(v for k, v in filling.items() if not k.startswith("refused"))
    report["storage_when_full"] = storage(url)
    since = report["storage_when_full"]["since"] or 0.0
    report["completed_while_in_flight_when_writes_failed"] = sum(
        outcomes[p] == "completed" and a < since < b for p, (a, b) in spans.items()
    )
    report["full"] = dict(await waves(ws, "full", 2, args.wave, args.steps, outcomes))
    report["storage_after_full_waves"] = storage(url)
    report["rss_kb_full"] = rss_kb(pid)
    (disk / "filler").unlink()
    freed = time.monotonic()
    while not storage(url)["writing"] and time.monotonic() - freed < 30:
        await asyncio.sleep(0.1)
    report["seconds_to_write_again"] = round(time.monotonic() - freed, 2)
    report["storage_after_space_returned"] = storage(url)
    report["after"] = dict(await waves(ws, "after", 2, args.wave, args.steps, outcomes))
    await asyncio.sleep(1)
    report["outcomes"] = outcomes
    return report


def audit(data: Path, out: Path, outcomes: dict[str, str]) -> dict[str, Any]:
    exported = subprocess.run(
        [sys.executable, "-m", "server", "export", "--data-dir", str(data), "--format", "jsonl", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if exported.returncode != 0:
        raise RuntimeError(exported.stderr)
    people: dict[str, list[str]] = {}
    torn = 0
    cut: set[str] = set()  # participants a failed write cut a record of: in progress when the disk filled
    for line in (out / "participants.jsonl").read_text().splitlines():
        row = json.loads(line)
        people.setdefault(row["participant_id"], []).append(row["outcome"])
        torn += int(row["torn_bytes"] or 0)
        if int(row["torn_bytes"] or 0):
            cut.add(row["participant_id"])
    completed = [p for p, o in outcomes.items() if o == "completed"]
    refused = [p for p, o in outcomes.items() if o.startswith("refused")]
    return {
        "completed_by_clients": len(completed),
        "completed_exported_as_completed": sum(people.get(p) == ["completed"] for p in completed),
        "completed_exported_otherwise": {p: people.get(p) for p in completed if people.get(p) != ["completed"]},
        "completed_with_a_record_cut_by_the_full_disk": sum(p in cut for p in completed),
        "refused": len(refused),
        "refused_with_sessions_exported": sum(p in people for p in refused),
        "sessions_exported": sum(len(v) for v in people.values()),
        "torn_bytes_exported": torn,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="4m", help="the tmpfs size (mount -o size=)")
    parser.add_argument("--filler-kb", type=int, default=2048, help="space taken before the study and freed later")
    parser.add_argument("--wave", type=int, default=10, help="participants walking at once")
    parser.add_argument("--steps", type=int, default=200, help="game steps each participant sends")
    parser.add_argument("--max-participants", type=int, default=2000, help="bound on the stream that fills the disk")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        print("bench.full_disk mounts a tmpfs: run it as root", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp) / "disk"
        disk.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.size}", "tmpfs", str(disk)], check=True)
        try:
            (disk / "filler").write_bytes(b"\0" * (args.filler_kb * 1024))
            data = disk  # the mount itself, so that the server's log (beside the data directory) stays off it
            flags = (*ONE_ADDRESS_IS_MANY, "--grace", "2", f"--admin-token={TOKEN}", "--no-precompressed")
            flags += ("--experiment", str(Path(__file__).with_name("experiment.py")))
            proc, url = start_server(data, *flags)
            try:
                report = asyncio.run(study(url, disk, args, proc.pid))
                report["server_alive"] = proc.poll() is None
            finally:
                stop_server(proc)
            log = Path(tmp) / f"server-{url.rsplit(':', 1)[1].strip('/')}.log"
            text = log.read_text()
            report["log_lines_cannot_write"] = text.count("cannot write")
            report["log_tracebacks"] = text.count("Traceback")
            report["disk_used_kb"] = shutil.disk_usage(disk).used // 1024
            outcomes = report.pop("outcomes")
            report.update(audit(data, Path(tmp) / "export", outcomes))
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)
    print(json.dumps(report, indent=2))
    ok = (
        not report["completed_exported_otherwise"]
        and report["refused"] > 0
        and report["refused_with_sessions_exported"] == 0
        and report["after"].get("completed", 0) == 2 * args.wave
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
