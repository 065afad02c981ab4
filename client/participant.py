"""An asyncio participant over a real WebSocket, speaking the `/ws` protocol."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from server import protocol
from statemachine import FINAL_STATES, IN_GAME

from .lockstep import Lockstep, Script, cycle

ACK_EVERY = 0.2
"""Seconds between acknowledgements of frames, as the page batches them."""
MATCH_TOLERATED = frozenset({"not_allowed", "frame_closed"})
"""Refusals a page in a match meets in normal play: an input that arrived after its frame closed (a resume),
or after the match ended; the server filled the frame, as it would for a slow page."""

DESKTOP_CHROMIUM = {
    "user_agent": (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36"
    ),
    "screen_width": 1920,
    "screen_height": 1080,
    "device_pixel_ratio": 1,
    "webassembly": True,
    "touch": False,
    "max_touch_points": 0,
    "hardware_concurrency": 8,
    "language": "en-US",
    "platform": "Linux x86_64",
}


class ProtocolClient:
    """One connection: send maps, read maps, each read bounded by a timeout."""

    def __init__(self, conn: WebSocketClientConnection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self.last_seq = 0
        self.n = 0  # research data is numbered, as the page numbers it, and kept until the server has it
        self.pending: dict[int, dict[str, Any]] = {}

    @classmethod
    async def connect(
        cls, url: str, *, timeout: float = 10.0, user_agent: str | None = None, headers: dict[str, str] | None = None
    ) -> ProtocolClient:
        headers = {"User-Agent": user_agent or DESKTOP_CHROMIUM["user_agent"], **(headers or {})}
        try:
            conn = await asyncio.wait_for(websocket_connect(HTTPRequest(url, headers=headers)), timeout)
        except TimeoutError:
            raise TimeoutError(f"{url} did not accept a WebSocket within {timeout:g} s") from None
        conn.protocol.set_nodelay(True)  # as browsers do; Nagle would hold a message behind an unacknowledged one
        return cls(conn, timeout)

    async def send(self, message: dict[str, Any]) -> None:
        await self.conn.write_message(protocol.encode(message), binary=True)

    async def send_data(self, message: dict[str, Any]) -> None:
        """Send research data numbered and keep it until a `received` covers it (`resend` after a reconnect)."""
        self.n += 1
        numbered = {**message, "n": self.n}
        self.pending[self.n] = numbered
        await self.send(numbered)

    async def resend(self) -> None:
        """What the server has not confirmed, again and in order: it keeps one copy of each and drops the rest."""
        for n in sorted(self.pending):
            await self.send(self.pending[n])

    def carry_over(self, old: ProtocolClient) -> None:
        """Take over a dropped connection's numbering and unconfirmed data."""
        self.last_seq, self.n, self.pending = old.last_seq, old.n, old.pending

    async def send_raw(self, frame: bytes | str) -> None:
        await self.conn.write_message(frame, binary=isinstance(frame, bytes))

    async def recv(self) -> dict[str, Any] | None:
        """The next message, or None once the server has closed the connection; `received` is handled here."""
        while True:
            message = await self._read()
            if message is None or message.get("type") != "received":
                return message

    async def until_confirmed(self) -> list[dict[str, Any]]:
        """Read until the server has confirmed every numbered message sent; returns the other messages seen."""
        seen = []
        while self.pending:
            message = await self._read()
            if message is None:
                raise ConnectionError(f"closed by server ({self.conn.close_code}) with {len(self.pending)} unconfirmed")
            if message.get("type") != "received":
                seen.append(message)
        return seen

    async def _read(self) -> dict[str, Any] | None:
        try:
            frame = await asyncio.wait_for(self.conn.read_message(), self.timeout)
        except TimeoutError:
            raise TimeoutError(f"the server sent nothing for {self.timeout:g} s") from None
        if frame is None:
            return None
        message: dict[str, Any] = protocol.msgpack.unpackb(frame, raw=False)
        if message.get("type") == "received":
            for n in [n for n in self.pending if n <= message["n"]]:
                del self.pending[n]
        else:
            self.last_seq = max(self.last_seq, message.get("seq", 0))
        return message

    async def ack(self) -> None:
        """Tell the server everything received so far arrived, so it need not hold it for a resume."""
        await self.send({"type": "ack", "seq": self.last_seq})

    async def recv_until(self, accept: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Messages up to and including the first one `accept` takes."""
        seen = []
        while True:
            message = await self.recv()
            if message is None:
                raise ConnectionError(f"closed by server ({self.conn.close_code} {self.conn.close_reason}); saw {seen}")
            seen.append(message)
            if accept(message):
                return seen

    async def until_type(self, kind: str) -> dict[str, Any]:
        return (await self.recv_until(lambda m: m["type"] == kind))[-1]

    async def until_state(self, name: str) -> dict[str, Any]:
        return (await self.recv_until(lambda m: m["type"] == "state" and m["state"] == name))[-1]

    def close(self) -> None:
        self.conn.close()

    async def aclose(self, wait: float = 1.0) -> None:
        """Close and wait (bounded) for the server's close, then drop the socket: none is left for the GC to find.

        `close` only sends the close frame; its socket stays open until the server answers (or Tornado's own 5 s
        abort), so a loop that ends first leaves it open and Python warns about it later, in another test.
        """
        self.conn.close()
        stream = self.conn.stream
        for _ in range(int(wait / 0.01)):
            if stream is None or stream.closed():
                break
            await asyncio.sleep(0.01)
        if stream is not None and not stream.closed():
            stream.close()


async def walk(
    url: str,
    *,
    facts: dict[str, Any] | None = None,
    participant_id: str | None = None,
    steps: int = 5,
    timeout: float = 10.0,
    on_state: Callable[[str], None] = lambda s: None,
    drop_after: int | None = None,
    away: float | None = 0.0,
    frames: int = 30,
    script: Script = cycle,
    salt: str = "",
    drop_at_frame: int | None = None,
    on_message: Callable[[dict[str, Any]], None] = lambda m: None,
) -> dict[str, Any]:
    """One simulated participant from `hello` to the end scene; returns the end scene's message.

    With `drop_after=n` the connection is cut without a goodbye after the n-th message received, and the
    participant comes back `away` seconds later with their token, as a flaky network or a reload would.

    A multiplayer game scene is played in lockstep (`client/lockstep.py`): `frames` frames with the
    `script`'s actions, then `game_over`; the result's `match` says what the player received. With
    `drop_at_frame=f` the connection is cut on receiving frame f (that frame lost with it) and comes back
    `away` seconds later; `away=None` never comes back.
    """
    client = await ProtocolClient.connect(url, timeout=timeout)
    sent_steps: set[tuple[str, int]] = set()
    player: Lockstep | None = None
    played: list[Lockstep] = []  # every match this participant played, in order
    acked_at = 0.0
    events: list[dict[str, Any]] = []  # partner_status and match_end, as they came
    try:
        hello: dict[str, Any] = {"type": "hello"}
        if participant_id:
            hello["participant_id"] = participant_id
        await client.send(hello)
        config = (await client.recv_until(lambda m: m["type"] in ("experiment_config", "error")))[-1]
        if config["type"] == "error":
            raise RuntimeError(f"the server refused hello: {config['code']}: {config['message']}")
        needs_pyodide = config["pyodide_config"]["needs_pyodide"]
        scene: dict[str, Any] = {}
        acted_on: tuple[Any, ...] = ()
        reported: set[str] = (
            set()
        )  # what this connection has told the preflight; a message lost in a drop is sent again
        received = 1
        while True:
            seen = client.last_seq
            message = await client.recv()
            if message is None:
                raise ConnectionError(f"closed by server ({client.conn.close_code} {client.conn.close_reason})")
            received += 1
            on_message(message)
            lost_frame = message["type"] == "frame" and message["f"] == drop_at_frame
            if received == drop_after or lost_frame:
                if lost_frame:
                    drop_at_frame = None
                client.last_seq = seen  # this message is lost with the connection; the server must resend it
                if away is None:
                    client.conn.stream.close()
                    return {**scene, "outcome": "gone", "match": player.summary() if player else None}
                client = await _come_back(client, url, config["session_token"], timeout, away)
                reported.clear()
                continue
            if message["type"] in ("match", "frame", "match_end", "partner_status"):
                if message["type"] == "match" and (player is None or player.match_id != message["match_id"]):
                    player = Lockstep(frames, script, salt=salt)
                    played.append(player)
                if message["type"] in ("partner_status", "match_end"):
                    events.append(message)
                if player is not None:
                    await _play(client, player, message)
                now = time.monotonic()
                if message["type"] != "frame" or now - acked_at >= ACK_EVERY:  # frames: acked in batches, as a page
                    acked_at = now
                    await client.ack()
                continue
            if message["type"] == "activate_scene":
                scene = message
            elif message["type"] == "error":
                tolerated = MATCH_TOLERATED if player is not None else {"not_allowed"}
                if message["code"] not in tolerated:  # a report the server already had, as the page ignores it
                    raise RuntimeError(f"server refused a message: {message}")
            elif message["type"] == "state":
                on_state(message["state"])
                room = message.get("waiting")  # a waiting room may be silent until its deadline: wait that long
                client.timeout = timeout + room["deadline_s"] if room else timeout
                if message["state"] in FINAL_STATES:
                    end = {**scene, "outcome": message["state"], "reason": message.get("reason")}
                    if player is None:
                        return end
                    return {
                        **end,
                        "match": player.summary(),
                        "matches": [p.summary() for p in played],
                        "events": events,
                    }
                regions = message.get("regions") or {}
                if regions.get("screening") == "checking" and "screening" not in reported:
                    reported.add("screening")
                    await client.send({"type": "screening", "facts": facts or DESKTOP_CHROMIUM})
                if needs_pyodide and regions.get("preloading") in ("idle", "loading") and "preload" not in reported:
                    reported.add("preload")
                    loading = {"type": "preload", "status": "loading", "stage": "runtime", "elapsed_ms": 0}
                    await client.send_data(loading)
                    await client.send_data({"type": "preload", "status": "ready", "elapsed_ms": 1})
                situation = (message["state"], message.get("scene_id"), message["may_advance"])
                if situation == acted_on:  # a resume confirms the state it resent: act once
                    continue
                acted_on = situation
                if message["state"] == IN_GAME and scene.get("multiplayer"):
                    pass  # the match's own messages drive a multiplayer game
                elif message["state"] == IN_GAME:
                    batch = [
                        {"episode": 0, "step": step, "action": step % 4, "reward": -0.01, "terminated": False}
                        for step in range(1, steps + 1)
                        if (scene["scene_id"], step) not in sent_steps
                    ]
                    sent_steps.update((scene["scene_id"], s["step"]) for s in batch)
                    if batch:
                        await client.send_data({"type": "steps", "steps": batch})
                    await client.send_data(
                        {"type": "game_over", "episodes": 1, "steps": steps, "total_reward": -0.01 * steps}
                    )
                elif message["may_advance"]:
                    await client.send({"type": "advance"})
                await client.ack()
    finally:
        await client.aclose()


async def _play(client: ProtocolClient, player: Lockstep, message: dict[str, Any]) -> None:
    """Hand a match message to the lockstep player and send what it answers, research data numbered."""
    handler = {"match": player.on_match, "frame": player.on_frame, "match_end": player.on_end}.get(message["type"])
    for out in handler(message) if handler else []:
        if out["type"] in protocol.RESEARCH_TYPES:
            await client.send_data(out)
        else:
            await client.send(out)


async def _come_back(client: ProtocolClient, url: str, token: str, timeout: float, away: float) -> ProtocolClient:
    """Cut the connection as a network would (no close frame), then resume with the token."""
    client.conn.stream.close()
    client.close()  # the stream is already gone: this only releases the connection object
    await asyncio.sleep(away)
    back = await ProtocolClient.connect(url, timeout=timeout)
    back.carry_over(client)
    await back.send({"type": "hello", "resume_token": token, "last_seq": back.last_seq})
    await back.resend()
    return back
