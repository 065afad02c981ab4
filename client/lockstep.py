"""One player's part in a server-sequenced match, with no I/O: the walk, the replay and the benchmark share it.

Feed it what the server sends (`match`, `frame`, `match_end`); it answers with the messages a page would send:
`match_ready`, an `input` for frames 1..D and then for f + D after each frame f it applies, a `state_hash`
every `hash_every` frames, and `game_over {frames, steps}` once it has applied its scripted number of frames
(or the match ended first). The "state" it hashes is a running SHA-256 of the frames' actions, so every
player of a match reports the same hash unless a frame differs (or `salt` forces a difference); it begins with
`protocol.SIMULATED_HASH`, so that the export does not check it against the game's own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from server import protocol

Script = Callable[[int, list[Any]], Any]
"""The action for frame f, given the agent's allowed actions (its keys' values, then its default)."""


def cycle(f: int, allowed: list[Any]) -> Any:
    """The default script: the agent's actions in turn, one per frame."""
    return allowed[f % len(allowed)]


def replaying(actions: Sequence[Any]) -> Script:
    """A recorded player's actions, frame by frame (the first action again for frames past the recording)."""

    def script(f: int, allowed: list[Any]) -> Any:
        if not actions:
            return allowed[0]
        return actions[f - 1] if 0 < f <= len(actions) else actions[0]

    return script


class Lockstep:
    """A simulated page in a match: which frames it applied, what it sent, and whether it is done."""

    def __init__(self, frames: int, script: Script = cycle, *, salt: str = "", hash_every: int | None = None) -> None:
        self.target = frames  # frames to play before reporting game over
        self.script = script
        self.salt = salt  # a different salt makes this player's hashes differ (a forced desync)
        self.hash_every = hash_every  # None: the match's own
        self.match_id: str | None = None
        self.agent: str | None = None
        self.delay = 1
        self.allowed: list[Any] = [0]
        self.applied = 0  # the last frame applied
        self.frames: list[dict[str, Any]] = []  # every frame received, in arrival order (duplicates included)
        self.bots_seen: set[str] = set()
        self.digest = hashlib.sha256(salt.encode())
        self.hashes: dict[int, str] = {}
        self.outcome: str | None = None  # the match's, from `match_end`
        self.reported: int | None = None  # the frames reported in game_over
        self.inputs_sent = 0

    @property
    def done(self) -> bool:
        return self.reported is not None

    @property
    def doubled(self) -> int:
        """Frames received more than once (a resend the client had already applied)."""
        numbers = [m["f"] for m in self.frames]
        return len(numbers) - len(set(numbers))

    def on_match(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """Matched, or the whole match again after a reload: load, say ready, send the first D inputs."""
        again = message["match_id"] == self.match_id
        self.match_id = message["match_id"]
        self.agent = message["agent"]
        self.delay = int(message["input_delay"])
        if self.hash_every is None:
            self.hash_every = int(message.get("hash_every") or 30)
        mine = message["agents"][self.agent]
        self.allowed = [*dict.fromkeys([*mine.get("keys", {}).values(), mine.get("default_action", 0)])]
        out: list[dict[str, Any]] = [{"type": "match_ready", "match_id": self.match_id}]
        for frame in message.get("frames") or []:  # after a reload: the frames closed so far (this player kept
            if frame["f"] > self.applied:  # the ones it had applied, as a page that kept its worker would)
                out += self.on_frame({"type": "frame", **frame})
        if not again:
            out += [self._input(f) for f in range(1, self.delay + 1)]
        return out

    def on_frame(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """Apply frame f (once, in order) and answer with the input for f + D and, when due, the state hash."""
        f = message["f"]
        self.frames.append(message)
        if f != self.applied + 1 or self.done:
            return []  # a frame already applied (a resend), one out of order, or past the end: nothing to step
        self.applied = f
        self.bots_seen.update(message.get("bots") or ())
        self.digest.update(msgpack.packb([f, sorted(message["actions"].items())], use_bin_type=True))
        out: list[dict[str, Any]] = []
        if self.hash_every and f % self.hash_every == 0:
            self.hashes[f] = protocol.SIMULATED_HASH + self.digest.hexdigest()[:32]
            out.append({"type": "state_hash", "f": f, "hash": self.hashes[f]})
        if f >= self.target:
            return [*out, self._game_over()]
        return [*out, self._input(f + self.delay)]

    def on_end(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """The match ended: a page still playing ends its game where it is."""
        self.outcome = message.get("outcome")
        return [] if self.done else [self._game_over()]

    def _input(self, f: int) -> dict[str, Any]:
        self.inputs_sent += 1
        return {"type": "input", "f": f, "action": self.script(f, self.allowed)}

    def _game_over(self) -> dict[str, Any]:
        self.reported = self.applied
        return {"type": "game_over", "episodes": 1, "frames": self.applied, "steps": self.applied}

    def summary(self) -> dict[str, Any]:
        return {
            "match_id": self.match_id,
            "agent": self.agent,
            "frames": list(self.frames),
            "applied": self.applied,
            "doubled": self.doubled,
            "bots": sorted(self.bots_seen),
            "hashes": dict(self.hashes),
            "outcome": self.outcome,
            "reported": self.reported,
        }
