"""The export's check of a multiplayer match: its frames replayed through its environment in CPython.

Each match is replayed in a child Python (`python -m server.match_check`) whose import path starts with the
study's folder, so the researcher's environment and policy modules import as they do in the page, nothing they
do touches the exporting process, and every match starts from a fresh interpreter, as every page's worker does.
The child applies the frames exactly as client/web/match.js does (`game_contract.replay_match`) and compares the
state hash after each frame with every hash the pages recorded for it:

    ok (n hashes)          every recorded hash equals the replay's at its frame
    mismatch at f=F        the first frame whose recorded hash differs (or that the replay never reached)
    not run: <reason>      no experiment given, a module that does not import, an ONNX bot, frames missing, ...
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from .protocol import SIMULATED_HASH
from .records import MatchRecords

CHECK_TIMEOUT_S = 300.0  # one match's replay; an environment that hangs is reported, not waited for
_ROOT = Path(__file__).resolve().parent.parent  # where `server` is imported from, for the child


@dataclass(frozen=True)
class Checked:
    """The check's verdict, and the actions the bots chose in the replay (by frame, then agent), when it ran."""

    result: str
    bot_actions: dict[int, dict[str, Any]] = field(default_factory=dict)


def job(match: MatchRecords, scenes: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any] | str:
    """What the child needs to replay `match`, or why it cannot be replayed. `scenes` (scene id -> episodes,
    max_steps) fills in what a log written before the match record kept them lacks."""
    start = match.start
    if start is None:
        return "not run: the log has no match record"
    if not match.frames:
        return "not run: no frames"
    numbers = [frame["f"] for frame in match.frames]
    if numbers != list(range(1, len(numbers) + 1)):
        gap = next(f for f, n in enumerate(numbers, 1) if n != f)
        return f"not run: frame {gap} is missing from the log"
    if not match.hashes:
        return "not run: no state hashes recorded"
    hashes = [h for h in match.hashes if not str(h.get("hash")).startswith(SIMULATED_HASH)]
    if not hashes:
        return "not run: its hashes came from simulated players (python -m client walk or replay), not the game"
    rules = dict((scenes or {}).get(str(start.get("scene_id")), {}))
    seeds = start.get("seeds") or []
    episodes = start.get("episodes", rules.get("episodes", len(seeds)))
    max_steps = start.get("max_steps", rules.get("max_steps"))
    if not seeds or not isinstance(max_steps, int):
        return "not run: the match record has no seeds or max_steps (give --experiment to read them from the study)"
    return {
        "environment": start.get("environment"),
        "env_kwargs": start.get("env_kwargs") or {},
        "agents": start.get("agents") or {},
        "seeds": seeds,
        "episodes": episodes,
        "max_steps": max_steps,
        "bot": start.get("bot"),
        "frames": [{k: frame.get(k) for k in ("f", "actions", "filled", "bots")} for frame in match.frames],
        "hashes": [{k: h.get(k) for k in ("agent", "f", "hash")} for h in hashes],
    }


def check(
    match: MatchRecords, study_dir: Path | None, scenes: Mapping[str, Mapping[str, Any]] | None = None
) -> Checked:
    """Replay one match in a child Python with `study_dir` first on its import path."""
    if study_dir is None:
        return Checked("not run: give --experiment")
    work = job(match, scenes)
    if isinstance(work, str):
        return Checked(work)
    path = os.pathsep.join(p for p in (str(study_dir), str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "server.match_check"],
            input=msgpack.packb(work, use_bin_type=True),
            capture_output=True,
            timeout=CHECK_TIMEOUT_S,
            cwd=str(study_dir),
            env={**os.environ, "PYTHONPATH": path},
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Checked(f"not run: the replay took longer than {CHECK_TIMEOUT_S:.0f} s")
    except OSError as exc:
        return Checked(f"not run: could not start Python for the replay ({exc.strerror or exc})")
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return Checked(f"not run: the replay failed ({lines[-1] if lines else f'exit status {done.returncode}'})")
    answer = msgpack.unpackb(done.stdout, raw=False, strict_map_key=False)
    return Checked(str(answer["result"]), {int(f): dict(a) for f, a in answer["bot_actions"].items()})


def replay(work: Mapping[str, Any]) -> dict[str, Any]:
    """In the child: the frames through the environment, then every recorded hash against the replay's."""
    from .game_contract import ContractError, replay_match

    try:
        run = replay_match(
            work["environment"],
            work["env_kwargs"],
            work["agents"],
            work["seeds"],
            work["frames"],
            episodes=work["episodes"],
            max_steps=work["max_steps"],
            bot=work["bot"],
        )
    except ContractError as exc:
        return {"result": f"not run: {exc}", "bot_actions": {}}
    humans = {f["f"]: set(f["actions"]) for f in work["frames"]}
    by_frame = {r["f"]: r for r in run}
    bot_actions = {
        f: {a: v for a, v in r["actions"].items() if a not in humans.get(f, ())} for f, r in by_frame.items()
    }
    for recorded in sorted(work["hashes"], key=lambda h: (h["f"], str(h["agent"]))):
        replayed = by_frame.get(recorded["f"])
        if replayed is None or replayed["hash"] != str(recorded["hash"]):
            return {"result": f"mismatch at f={recorded['f']}", "bot_actions": bot_actions}
    return {"result": f"ok ({len(work['hashes'])} hashes)", "bot_actions": bot_actions}


def main() -> int:
    work = msgpack.unpackb(sys.stdin.buffer.read(), raw=False, strict_map_key=False)
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # what the researcher's code prints must not mix with the answer
    answer = replay(work)
    out.write(msgpack.packb(answer, use_bin_type=True))
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
