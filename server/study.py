"""The running study: the shared machine, the sessions, who has taken part, and what ended sessions added up to.

The socket handler drives it; `/admin` reads it through `StudyView` and changes nothing.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast

from tornado.ioloop import IOLoop
from tornado.platform.asyncio import BaseAsyncIOLoop

from statemachine import SessionMachine

from . import __version__, delivery
from .clock import SharedClock
from .config import Config
from .limits import Limits
from .locations import study_wheelhouse
from .matches import Lobby
from .packages import resolve_packages
from .partners import ONNX_URL, check_onnxruntime, check_policy_functions, resolve_models
from .precompress import STDLIB_URL, stored_stdlib
from .protocol import Close, Code, Refusal, Writer
from .runtime import RuntimeSetupError, load_runtime
from .session import Session, token_digest
from .snapshot import SnapshotWriter, restore
from .store import DataStore, SessionLog

log = logging.getLogger("preflight")

RETRY_S = 1.0  # how often records kept in memory are offered to the disk again


def tally(session: Session, counts: Counter[str]) -> None:
    """Add what a session contributes to the outcome counts, so far; the study adds it up when the session retires."""
    if session.outcome:
        counts[f"outcome:{session.outcome}"] += 1
        if session.verdict:
            counts.update(f"excluded:{reason}" for reason in session.verdict)
    if session.preload_result == "error":
        counts["preload_error"] += 1
    counts.update(f"timeout:{trigger}" for trigger in session.timed_out)
    if session.timed_out:
        counts["timed_out"] += 1


class Link(Protocol):
    """The one connection driving a session: the socket handler in the server."""

    rtt_ms: float | None

    @property
    def user_agent(self) -> str: ...

    def send(self, message: dict[str, Any]) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class StudyView(Protocol):
    """What `/admin` may read of the running study."""

    @property
    def name(self) -> str: ...

    @property
    def sessions(self) -> Mapping[str, Session]: ...

    @property
    def outcomes(self) -> Counter[str]: ...

    def session_file(self, session_id: str) -> Path: ...

    def storage(self) -> dict[str, Any]: ...

    @property
    def lobby(self) -> Lobby: ...


def wheelhouse_for(config: Config) -> Path:
    """The wheelhouse given, else the study's own in its cache, so an installed Preflight never writes into itself."""
    if config.wheelhouse is not None:
        return config.wheelhouse
    study_dir = config.experiment_file.parent if config.experiment_file is not None else Path.cwd()
    try:
        return study_wheelhouse(study_dir)
    except OSError as exc:
        raise RuntimeSetupError(
            f"cannot prepare the wheelhouse beside {study_dir}: {exc.strerror or exc}; give one with --wheelhouse"
        ) from exc


class Study:
    """Sessions by id and by token digest, the connection driving each, and participant ids already used."""

    def __init__(self, config: Config) -> None:
        self.config = config
        runtime = load_runtime(config.pyodide_dir, wheelhouse_for(config), config.pyodide_url)
        self.packages = resolve_packages(config.experiment, config.experiment_file, runtime)
        self.runtime = runtime.with_wheels(self.packages.local)
        self.models = resolve_models(config.experiment, config.experiment_file)
        check_onnxruntime(self.models)
        check_policy_functions(config.experiment, config.experiment_file)
        self.pyodide_config = {
            **config.experiment.pyodide_config,
            **self.packages.page_config(config.micropip),
            **self.runtime.page_config(),
            "models": [model.page_config() for model in self.models.values()],
            "onnxruntime_url": ONNX_URL,
            "stdlib_url": None,
        }
        # The stdlib repacked with stored members, which compressed copies shrink far better (server/precompress.py).
        self.stdlib = (
            stored_stdlib(runtime.pyodide_dir, config.precompressed_dir)
            if config.precompressed_dir is not None and runtime.pyodide_dir is not None
            else None
        )
        if self.stdlib is not None:
            self.pyodide_config["stdlib_url"] = f"{STDLIB_URL}{self.stdlib.parent.name}/{self.stdlib.name}"
        self.machine = SessionMachine()
        # Runs a callback once the loop is done with what it is doing now: asyncio's own `call_soon`, which Tornado's
        # `add_callback` wraps in a partial and a thread check on every call (several per participant message).
        self.soon = cast(BaseAsyncIOLoop, IOLoop.current()).asyncio_loop.call_soon
        self.store = DataStore(config.data_dir, on_failure=self._writes_failing, defer=self.soon)
        self.save_snapshot = self.store.save_snapshot  # one bound method for every session's writer, not one each
        self.lobby = Lobby(IOLoop.current(), self.store.open_match)
        self.clock = SharedClock(IOLoop.current())  # the sessions' timers: one loop timer for all of them
        self._retrying = False
        self.limits = Limits(config)
        self.outcomes: Counter[str] = Counter()  # what retired sessions added up to
        self.sessions: dict[str, Session] = {}  # by session id: live and parked sessions
        self.by_digest: dict[str, Session] = {}
        self.links: dict[str, Link] = {}  # session id -> the one connection driving it
        self.participants: dict[str, str] = {}  # participant id -> outcome ("" while in progress)
        before = self.store.served_before()
        if before is not None and before != config.experiment.name:
            log.warning(
                "%s holds the data of experiment %r; this server runs %r, whose data would be mixed with it there: "
                "give each study its own --data-dir",
                config.data_dir,
                before,
                config.experiment.name,
            )
        self.store.describe_study(
            {
                "wall": time.time(),
                "preflight_version": __version__,
                "experiment": config.experiment.describe(),
                "runtime": self.runtime.describe(),
            }
        )
        self._restore()

    @property
    def name(self) -> str:
        return self.config.experiment.name

    def session_file(self, session_id: str) -> Path:
        return self.store.sessions / f"{session_id}.msgpack"

    def storage(self) -> dict[str, Any]:
        return self.store.health()

    def _writes_failing(self) -> None:
        """Writes started failing: try again every second until what waits in memory is on disk."""
        if not self._retrying:
            self._retrying = True
            IOLoop.current().call_later(RETRY_S, self._retry_writes)

    def _retry_writes(self) -> None:
        if self.store.retry():
            self._retrying = False
        else:
            IOLoop.current().call_later(RETRY_S, self._retry_writes)

    def admit(self, hello: dict[str, Any]) -> Refusal | None:
        """Recruitment platforms resend links: an id with a session in progress, or one that ended in a locking
        outcome (`--lock-ids`, by default only `completed`), may not start again; the refusal never says which.

        While participant data cannot be written nobody new starts: those in progress go on from memory.
        """
        if self.store.failing is not None:
            return Refusal(Code.STORAGE_UNAVAILABLE, "the server cannot record data right now; please try again later")
        participant = Session.claimed_participant(hello)
        if participant is None or participant not in self.participants:
            return None
        outcome = self.participants[participant]
        if outcome and outcome not in self.config.lock_ids:
            return None
        return Refusal(Code.ALREADY_PARTICIPATED, f"participant {participant} cannot start a new session")

    def open(self, link: Link) -> Session:
        """A new session for a connection that said `hello`; the caller fires it once the frame is recorded."""
        session_id, sink = self.store.open_session()
        session = Session(
            self.machine,
            self.config.experiment,
            self.clock,
            link.send,
            user_agent=link.user_agent,
            session_id=session_id,
            **self._wiring(sink),
        )
        session.rtt_ms = link.rtt_ms
        self._track(session)
        self.links[session_id] = link
        return session

    def admitted(self, session: Session) -> None:
        self.participants.setdefault(session.participant_id or "", "")

    def find(self, token: str) -> Session | None:
        digest = token_digest(token)
        session = self.by_digest.get(digest)
        return session if session is not None and hmac.compare_digest(session.digest, digest) else None

    def resume(self, session: Session, link: Link, token: str, last_seq: int) -> None:
        """The newest connection wins: a second tab with the same token takes the session over."""
        previous = self.links.get(session.session_id)
        self.links[session.session_id] = link
        if previous is not None and previous is not link:
            previous.close(Close.TAKEN_OVER, "this session was resumed from another connection")
        session.reconnect(link.send, token, last_seq)

    def connection_lost(self, session: Session, link: Link) -> None:
        """A connection closed: its session waits for the participant (or, finished, lingers) for the grace period."""
        if self.links.get(session.session_id) is not link:
            return
        del self.links[session.session_id]
        session.connection_lost()
        if session.outcome:
            self.participants[session.participant_id or ""] = session.outcome

    def retire(self, session: Session) -> None:
        """The table is done with a session: it leaves memory, its outcome is counted and its log closed."""
        if self.sessions.pop(session.session_id, None) is None:
            return
        self.by_digest.pop(session.digest, None)
        self.links.pop(session.session_id, None)
        session.release()
        self.limits.forget(session.session_id)
        if session.participant_id is not None:
            if session.outcome == "abandoned":
                self.participants.pop(session.participant_id, None)
            else:
                self.participants[session.participant_id] = session.outcome or ""
        tally(session, self.outcomes)
        if isinstance(session.log, SessionLog):
            session.log.close()

    def _wiring(self, sink: Writer) -> dict[str, Any]:
        """How every session, new or restored, is connected to the study."""
        return {
            "pyodide_config": self.pyodide_config,
            "timeouts": self.config.timeouts,
            "log": sink,
            "save": SnapshotWriter(self.save_snapshot),
            "on_retire": self.retire,
            "lobby": self.lobby,
        }

    def _track(self, session: Session) -> None:
        self.sessions[session.session_id] = session
        self.by_digest[session.digest] = session

    def _restore(self) -> None:
        """Sessions in progress when the server last stopped are parked, waiting for their participants."""
        for saved in self.store.snapshots():
            if saved.get("outcome"):
                if saved["outcome"] != "abandoned" and saved.get("participant_id"):
                    self.participants[saved["participant_id"]] = saved["outcome"]
                continue
            if saved.get("seed") is None:
                continue
            _, sink = self.store.open_session(saved["session_id"])
            try:
                session = restore(saved, self.machine, self.config.experiment, self.clock, **self._wiring(sink))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("not resuming session %s: %s", saved.get("session_id"), exc)
                sink.close()
                continue
            highest, steps = delivery.logged(sink.path)
            session.received_n = max(session.received_n, highest)
            session.game_steps = max(session.game_steps, steps)
            self._track(session)
            self.participants[session.participant_id or ""] = ""
        if self.sessions:
            log.info(
                "%d sessions from before the restart wait %.0f s for their participants",
                len(self.sessions),
                self.config.timeouts.grace,
            )
