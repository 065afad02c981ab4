"""Distributed replay on Locust: the same replay core, driven on gevent with websocket-client.

    locust -f client/locustfile.py --master --headless --expect-workers 4 --users 1000 --spawn-rate 50 \\
        --run-time 5m --host ws://HOST:PORT/ws --traces data/ --speed 1
    locust -f client/locustfile.py --worker --master-host MASTER --traces data/ --speed 1   # on each load machine

Each user replays one recorded session after another, each with a fresh participant id. The players of a
recorded match are replayed as a group: users take the group's places in turn from a shared in-process
queue and start together once all have arrived (or after --reply-timeout), so the server matches them.
Every timed reply is a `WS` request named after the message type; each session ends with a
`session` request named `ok` or after its divergence (a failure with the detail).
"""

from __future__ import annotations

import itertools
import logging
import os
import time

import gevent
import websocket
from gevent.event import Event
from gevent.queue import Empty, Queue
from locust import User, events, task
from locust.exception import StopUser

from client import schedule, stats
from client.participant import DESKTOP_CHROMIUM
from client.replay import ReplaySession, Send, decode
from client.trace import Trace, TraceError, groups, load

_traces: dict[str, list[Trace]] = {}
_run = schedule.run_id()
_counter = itertools.count()
_places: dict[str, Queue] = {}  # per traces option: (group instance, trace, size), one place per player, in turn
_gathering: dict[int, tuple[list[int], Event]] = {}  # group instance -> players arrived, everyone-is-here
_instances = itertools.count()


def _take_place(key: str, traces: list[Trace]) -> tuple[int, int, int]:
    """The next place to play: refilled with one round of every group (a single trace is a group of one)."""
    queue = _places.setdefault(key, Queue())
    if queue.empty():
        for members in groups(traces):
            instance = next(_instances)
            for trace in members:
                queue.put((instance, trace, len(members)))
    return queue.get_nowait()


def _gather(instance: int, size: int, timeout: float) -> None:
    """Wait for the group's other players, so that all of them arrive in the waiting room together."""
    arrived, everyone = _gathering.setdefault(instance, ([], Event()))
    arrived.append(1)
    if len(arrived) >= size:
        everyone.set()
        _gathering.pop(instance, None)
    everyone.wait(timeout)


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--traces", default="data", help="recorded sessions: files or directories, comma-separated")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="recorded timing divided by this; 0 = as fast as replies come"
    )
    parser.add_argument(
        "--reply-timeout", type=float, default=10.0, help="seconds without an expected reply: a timeout"
    )


@events.init.add_listener
def _check_traces(environment, **_: object) -> None:
    """Traces that cannot be replayed end the run at once, named, instead of a traceback from every user."""
    options = environment.parsed_options
    if options is None or options.traces in _traces:
        return
    try:
        _traces[options.traces] = load(options.traces.split(","))
    except TraceError as exc:
        logging.getLogger("preflight.locust").error("--traces: %s", exc)
        environment.process_exit_code = 2
        if environment.runner is not None:
            environment.runner.quit()


def drive(session: ReplaySession, url: str, timeout: float) -> ReplaySession:
    """Play one session to its end; a reader greenlet stamps each frame as it arrives."""
    try:
        ws = websocket.create_connection(url, timeout=timeout, header=[f"User-Agent: {DESKTOP_CHROMIUM['user_agent']}"])
    except Exception as exc:  # refused, reset, timed out, bad handshake: all are a failed session
        session.failed(f"{type(exc).__name__}: {exc}")
        return session
    session.connected(time.monotonic())
    ws.settimeout(None)
    inbox: Queue = Queue()

    def read() -> None:
        try:
            while True:
                opcode, data = ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                inbox.put((time.monotonic(), data if opcode == websocket.ABNF.OPCODE_BINARY else data.decode()))
        except Exception:  # the connection is gone, however it went
            pass
        inbox.put((time.monotonic(), None))

    reader = gevent.spawn(read)
    try:
        while True:
            action = session.poll(time.monotonic())
            if action is None:
                break
            if isinstance(action, Send):
                binary = isinstance(action.frame, bytes)
                try:
                    ws.send(action.frame, opcode=websocket.ABNF.OPCODE_BINARY if binary else websocket.ABNF.OPCODE_TEXT)
                except Exception:  # closed under us; the reader reports the close
                    gevent.sleep(0)
                else:
                    session.sent_frame(time.monotonic())
                continue
            try:
                item = inbox.get(timeout=max(0.0, action.until - time.monotonic()))
            except Empty:
                continue
            while item is not None:
                t, frame = item
                session.received(None if frame is None else decode(frame), t)
                item = inbox.get_nowait() if not inbox.empty() else None
    finally:
        ws.close()
        reader.kill(block=False)
    return session


class ReplayUser(User):
    """One simulated participant at a time per user, replaying the recorded sessions in turn."""

    host = "ws://127.0.0.1:8888/ws"

    def on_start(self) -> None:
        options = self.environment.parsed_options
        if options.traces not in _traces:  # refused at init: this user has nothing to replay
            raise StopUser()
        self.traces = _traces[options.traces]
        self.speed = options.speed
        self.timeout = options.reply_timeout

    @task
    def replay_one(self) -> None:
        index = next(_counter)
        participant = schedule.participant_id(f"{_run}-{os.getpid()}", index)
        instance, trace, size = _take_place(self.environment.parsed_options.traces, self.traces)
        if size > 1:
            _gather(instance, size, self.timeout)
        session = ReplaySession(
            self.traces[trace],
            participant,
            start=time.monotonic(),
            speed=self.speed,
            timeout=self.timeout,
        )
        drive(session, self.host, self.timeout)
        for event in stats.locust_events(session):
            self.environment.events.request.fire(context={}, **event)
