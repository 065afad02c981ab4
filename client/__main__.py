"""`python -m client walk`: one simulated participant through a running server."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketError

from server.arguments import positive, whole

from .participant import walk
from .replay_cli import add_replay_parser, run_replay, ws_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client", description="Preflight protocol client.")
    commands = parser.add_subparsers(dest="command", required=True)
    w = commands.add_parser("walk", help="walk one simulated desktop-Chromium participant through the experiment")
    w.add_argument(
        "--url", type=ws_url, default="ws://127.0.0.1:8888/ws", help="the server's WebSocket URL (default: %(default)s)"
    )
    w.add_argument("--participant-id", default=None, help="participant id to send in hello (default: server assigns)")
    w.add_argument(
        "--steps",
        type=whole(0),
        default=5,
        help="game steps per game scene, in one batch (default: %(default)s)",
    )
    w.add_argument(
        "--timeout",
        type=positive,
        default=30.0,
        help="seconds to wait for any reply; in a waiting room, its deadline plus this (default: %(default)s)",
    )
    w.add_argument(
        "--count",
        type=whole(1, 100_000),
        default=1,
        help="participants to walk, one after another, each with its own id (default: %(default)s)",
    )
    w.add_argument(
        "--frames",
        type=whole(1),
        default=30,
        help="frames to play in a multiplayer game scene (default: %(default)s)",
    )
    w.add_argument(
        "--together",
        type=whole(1, 100_000),
        default=1,
        help="participants walked at once, so that a multiplayer game's group forms (default: %(default)s)",
    )
    add_replay_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "replay":
        return run_replay(args)
    if args.count > 1 or args.together > 1:
        return _walk_many(args)

    path: list[str] = []

    def on_state(state: str) -> None:
        if not path:  # said once the server answered, not before the connection is tried
            path.append("connected")
            print("connected", flush=True)
        if path[-1] != state:
            path.append(state)
            print(state, flush=True)

    try:
        end = asyncio.run(
            walk(
                args.url,
                participant_id=args.participant_id,
                steps=args.steps,
                frames=args.frames,
                timeout=args.timeout,
                on_state=on_state,
            )
        )
    except WALK_FAILURES as exc:
        print(f"python -m client: error: {_failure(args.url, exc)}", file=sys.stderr)
        return 1
    print("path: " + " → ".join(path))
    if end["outcome"] == "completed":
        print(f"completion code: {end.get('completion_code')}")
        return 0
    print(f"excluded: {end.get('reason')}")
    return 1


WALK_FAILURES = (TimeoutError, OSError, ConnectionError, RuntimeError, HTTPClientError, WebSocketError)


def _failure(url: str, exc: BaseException) -> str:
    """What went wrong, in the terms of the command: a wrong URL is named as one, not as Tornado's exception."""
    if isinstance(exc, HTTPClientError) and exc.code == 404:
        return f"{url}: no WebSocket endpoint there (HTTP 404); Preflight's is at /ws"
    if isinstance(exc, HTTPClientError):
        return f"{url}: the server refused the WebSocket (HTTP {exc.code} {exc.message})"
    if isinstance(exc, WebSocketError):
        return f"{url}: not a WebSocket endpoint ({exc}); Preflight's is at /ws"
    if isinstance(exc, (RuntimeError, TimeoutError)) and str(exc):  # the walk's own words
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _summary(outcomes: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))


def _walk_many(args: argparse.Namespace) -> int:
    """Walk `--count` participants, `--together` at a time; ids get a numeric suffix when one is given."""
    outcomes: dict[str, int] = {}

    async def batch(first: int, size: int) -> list[dict[str, Any]]:
        ids = [f"{args.participant_id}-{n + 1}" if args.participant_id else None for n in range(first, first + size)]
        walks = (
            walk(args.url, participant_id=i, steps=args.steps, frames=args.frames, timeout=args.timeout) for i in ids
        )
        return list(await asyncio.gather(*walks))

    for first in range(0, args.count, args.together):
        size = min(args.together, args.count - first)
        try:
            ends = asyncio.run(batch(first, size))
        except WALK_FAILURES as exc:
            which = f"participant {first + 1}" if size == 1 else f"participants {first + 1}-{first + size}"
            done = f" ({_summary(outcomes)} before them)" if outcomes else ""
            print(
                f"python -m client: error: {which}{done}: {_failure(args.url, exc)}",
                file=sys.stderr,
            )
            return 1
        for end in ends:
            outcomes[end["outcome"]] = outcomes.get(end["outcome"], 0) + 1
    print(f"{args.count} participants: {_summary(outcomes)}")
    return 0 if set(outcomes) == {"completed"} else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the output piped into a command that stopped reading (`| head`): not an error here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit fails otherwise
        sys.exit(1)
