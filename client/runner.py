"""The asyncio driver: many ReplaySessions over Tornado WebSocket connections in one event loop."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClosedError, websocket_connect

from . import schedule
from .participant import DESKTOP_CHROMIUM
from .replay import ReplaySession, Send, decode
from .stats import Collector
from .trace import Trace
from .trace import groups as trace_groups


class Inbox:
    """Frames as they arrive, stamped on arrival; one waiter, woken by a frame or a deadline."""

    def __init__(self) -> None:
        self.items: deque[tuple[float, bytes | str | None]] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, frame: bytes | str | None) -> None:
        self.items.append((time.monotonic(), frame))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, until: float) -> None:
        if self.items:
            return
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        handle = loop.call_later(max(0.0, until - time.monotonic()), lambda: waiter.done() or waiter.set_result(None))
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None


async def drive(session: ReplaySession, url: str, connect_timeout: float = 10.0) -> ReplaySession:
    """Play one session to its end over a Tornado WebSocket connection."""
    inbox = Inbox()
    request = HTTPRequest(
        url,
        headers={"User-Agent": DESKTOP_CHROMIUM["user_agent"]},
        connect_timeout=connect_timeout,
        request_timeout=connect_timeout,
    )
    try:
        conn = await websocket_connect(request, on_message_callback=inbox.put)
        conn.protocol.set_nodelay(True)  # as browsers do; Nagle would hold a message behind an unacknowledged one
    except Exception as exc:  # refused, reset, timed out, HTTP error: all are a failed session
        session.failed(f"{type(exc).__name__}: {exc}")
        return session
    session.connected(time.monotonic())
    try:
        while True:
            action = session.poll(time.monotonic())
            if action is None:
                break
            if isinstance(action, Send):
                try:
                    written = conn.write_message(action.frame, binary=isinstance(action.frame, bytes))
                except WebSocketClosedError:  # closed under us: what arrived before counts, then the close
                    closed = True
                else:
                    written.add_done_callback(_closed_is_fine)
                    session.sent_frame(time.monotonic())
                    continue
            else:
                closed = False
                await inbox.wait(action.until)
            while inbox.items:
                t, frame = inbox.items.popleft()
                session.received(None if frame is None else decode(frame), t)
            if closed:
                session.received(None, time.monotonic())
    finally:
        conn.close()
    return session


def _closed_is_fine(written: asyncio.Future[None]) -> None:
    """A write the server never took: the close reaches the session through the inbox, so the error is dropped."""
    if not written.cancelled():
        written.exception()


def planned_sessions(traces: list[Trace], sessions: int) -> int:
    """How many sessions a replay of `sessions` runs: recorded matches are replayed as whole groups."""
    return len(schedule.plan_groups(sessions, trace_groups(traces), 0.0))


async def replay(
    traces: list[Trace],
    url: str,
    *,
    sessions: int,
    concurrency: int,
    speed: float,
    ramp: float,
    max_seconds: float,
    timeout: float = 10.0,
    run: str | None = None,
    on_done: Callable[[Collector, ReplaySession], None] = lambda c, s: None,
    collector: Collector | None = None,
) -> tuple[Collector, float]:
    """Replay `sessions` sessions (traces in turn) within `max_seconds`; returns the merged statistics and duration.
    Given a `collector`, it holds what finished even when the run is interrupted (each session adds itself as it
    ends, cancelled ones as unfinished)."""
    run = run or schedule.run_id()
    collector = collector if collector is not None else Collector()
    grouped = trace_groups(traces)
    slots = asyncio.Semaphore(max(concurrency, *(len(g) for g in grouped)))  # a whole group fits at once
    admitting = asyncio.Lock()  # a group takes its slots at once, so that two groups never wait on each other
    start = time.monotonic()

    async def one(planned: schedule.Planned) -> None:
        due = max(start + planned.offset, time.monotonic())
        session = ReplaySession(
            traces[planned.trace],
            schedule.participant_id(run, planned.index),
            start=due,
            speed=speed,
            timeout=timeout,
        )
        try:
            await drive(session, url, connect_timeout=timeout)
        finally:
            slots.release()
            collector.add(session)
            on_done(collector, session)

    async def together(members: list[schedule.Planned]) -> None:
        """A recorded match's players (or one single player): admitted at once, started at once."""
        await asyncio.sleep(max(0.0, start + members[0].offset - time.monotonic()))
        async with admitting:
            for _ in members:
                await slots.acquire()
        await asyncio.gather(*(one(p) for p in members))

    planned = schedule.plan_groups(sessions, grouped, ramp)
    batches: dict[int, list[schedule.Planned]] = {}
    for p in planned:
        batches.setdefault(p.group if p.group >= 0 else -1 - p.index, []).append(p)
    tasks = [asyncio.ensure_future(together(members)) for members in batches.values()]
    done, pending = await asyncio.wait(tasks, timeout=max_seconds)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    errors = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
    if errors:
        raise errors[0]  # a bug in the replayer, not a server problem: every task's error was retrieved
    return collector, time.monotonic() - start
