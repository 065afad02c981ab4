"""`/admin`: where every participant is now, and one participant's path, for the researcher.

Everything is counted from the live sessions and the lifecycle table, so states added
to the table appear here without a change; ended sessions are read back from disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.iostream import StreamClosedError

from statemachine import FINAL_STATES, OUTCOMES, active_states, state_names, top_state
from statemachine.match import MATCH_OUTCOMES, MATCH_STATES

from .records import PRELOAD_FIELDS, read_session
from .store import read_records
from .study import StudyView, tally

if TYPE_CHECKING:
    from .session import Session

ADMIN_DIR = Path(__file__).resolve().parent / "admin_web"
COOKIE = "preflight_admin"
SESSION_ID = re.compile(r"[0-9a-f]{16}")
RECENT = 200  # live sessions listed on the page; the API lists all


def counts(study: StudyView) -> dict[str, Any]:
    """The numbers `/admin` shows: sessions per state now, and outcomes of every session this run."""
    live = list(study.sessions.values())
    states = dict.fromkeys(state_names(), 0)
    outcomes = Counter(study.outcomes)
    for session in live:
        for name in active_states(session.state):
            states[name] = states.get(name, 0) + 1
        tally(session, outcomes)
    return {
        "live": len(live),
        "states": states,
        "final_states": sorted(FINAL_STATES),
        "outcomes": {
            **{outcome: outcomes[f"outcome:{outcome}"] for outcome in OUTCOMES},
            "preload_error": outcomes["preload_error"],
            "timed_out": outcomes["timed_out"],
        },
        "excluded_reasons": _prefixed(outcomes, "excluded:"),
        "timeouts": _prefixed(outcomes, "timeout:"),
        "storage": study.storage(),
        "matches": match_counts(study),
    }


MATCH_LIVE_STATES = [name for s in MATCH_STATES if (name := s if isinstance(s, str) else s["name"]) != "ended"]
"""A match in progress is in one of these; an ended one leaves the lobby and is counted by its outcome."""


def match_counts(study: StudyView) -> dict[str, Any]:
    """Multiplayer now: how many wait for a partner, matches in each state, and how the ended ones ended."""
    lobby = study.lobby
    states = dict.fromkeys(MATCH_LIVE_STATES, 0)
    for match in lobby.matches.values():
        name = str(match.state).split(".", 1)[0]
        states[name] = states.get(name, 0) + 1
    return {
        "waiting": sum(len(queue) for queue in lobby.queues.values()),
        "states": states,
        "ended": {outcome: lobby.outcomes[outcome] for outcome in MATCH_OUTCOMES},
    }


def lobby_view(study: StudyView) -> dict[str, Any]:
    """Who waits for which game and for how long, and every match in progress (players, state, frame, absent)."""
    return study.lobby.describe()


def _prefixed(counter: Counter[str], prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: n for k, n in sorted(counter.items()) if k.startswith(prefix)}


def live_summary(sessions: Iterable[Session]) -> list[dict[str, Any]]:
    out = []
    for session in sessions:
        name, regions = top_state(session.state)
        since = session.changed_at
        out.append(
            {
                "session_id": session.session_id,
                "participant_id": session.participant_id,
                "state": name,
                "regions": regions,
                "in_state_s": None if since is None else round(time.monotonic() - since, 1),
            }
        )
    return out


def details(study: StudyView, session_id: str) -> dict[str, Any] | None:
    """One participant's path, screening, preload stages and scene order, from their records on disk."""
    path = study.session_file(session_id)
    if not SESSION_ID.fullmatch(session_id) or not path.is_file():
        return None
    summary = read_session(session_id, read_records(path))
    t0 = summary.first_t or 0.0

    def when(t: float | None, wall: float | None) -> dict[str, Any]:
        return {"at_s": None if t is None else round(t - t0, 3), "wall": wall}

    screening = summary.screening
    out: dict[str, Any] = {
        "session_id": session_id,
        "live": session_id in study.sessions,
        "path": [{"event": s.event, "source": s.source, "dest": s.dest, **when(s.t, s.wall)} for s in summary.path],
        "screening": None
        if screening is None
        else {
            "facts": screening.facts or {},
            "rtt_ms": screening.rtt_ms,
            "verdict": screening.verdict or [],
            **when(screening.t, screening.wall),
        },
        "preload": [
            {k: p.report[k] for k in PRELOAD_FIELDS if k in p.report} | when(p.t, p.wall) for p in summary.preload
        ],
        "scene_order": [],
        "scenes_shown": [
            {"scene_id": s.scene_id, "scene_type": s.scene_type, "index": s.index, **when(s.t, s.wall)}
            for s in summary.scenes_shown
        ],
        "matches": [
            {"scene_id": m.scene_id, "match_id": m.match_id, "agent": m.agent, **when(m.t, m.wall)}
            for m in summary.matches
        ],
        "unmatched": [{"scene_id": u.scene_id, "then": u.then, **when(u.t, u.wall)} for u in summary.unmatched],
        "games": [
            {
                "scene_id": g.scene_id,
                "failed": bool(g.summary.get("failed")),
                "error": g.summary.get("error"),
                "steps": g.summary.get("steps"),
                "episodes": g.summary.get("episodes"),
                "total_reward": g.summary.get("total_reward"),
                "complete": (g.check or {}).get("complete"),
                **when(g.t, g.wall),
            }
            for g in summary.games
        ],
        "participant_id": None,
        "params": {},
        "seed": None,
        "outcome": None,
        "state": None,
    }
    if (begin := summary.begin) is not None:
        out.update(
            participant_id=begin.participant_id,
            params=begin.params or {},
            seed=begin.seed,
            scene_order=begin.order or [],
            user_agent=begin.user_agent,
            started_wall=begin.wall,
        )
    if (closed := summary.closed) is not None:
        out.update(outcome=closed.outcome, state=closed.state, ended=when(closed.t, closed.wall))
    session = study.sessions.get(session_id)
    if session is not None:
        name, regions = top_state(session.state)
        out.update(state=name, regions=regions or None, outcome=session.outcome)
    return out


class LifecycleSvg:
    """The lifecycle drawn once by `python -m statemachine diagram` in a child process.

    A child process keeps the diagram machine and Graphviz out of the server's memory and loop.
    It starts with the server when the app is built on a running loop (`python -m server`),
    otherwise on the first request that needs it.
    """

    def __init__(self) -> None:
        self._task: asyncio.Future[tuple[str | None, str]] | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = asyncio.ensure_future(self._draw())

    async def get(self) -> tuple[str | None, str]:
        """(svg, "") or (None, why not)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._draw())
        return await asyncio.shield(self._task)

    async def _draw(self) -> tuple[str | None, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "statemachine",
                "diagram",
                "--format",
                "svg",
                cwd=str(Path(__file__).resolve().parent.parent),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        except (TimeoutError, OSError) as exc:
            return None, f"the diagram could not be drawn: {exc}"
        if proc.returncode != 0:
            return None, err.decode(errors="replace").strip()
        svg = out.decode()
        return svg[svg.index("<svg") :], ""


def cookie_value(token: str) -> str:
    """What the admin cookie holds: an HMAC of the token, so a leaked cookie jar does not leak the token itself."""
    return hmac.new(token.encode(), b"preflight admin cookie", hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class AdminHandler(tornado.web.RequestHandler):
    """Every `/admin` URL: refused with 403 before anything else unless the admin token comes with it."""

    def initialize(self, study: StudyView, token: str, diagram: LifecycleSvg) -> None:
        self.study = study
        self.token = token
        self.diagram = diagram

    def prepare(self) -> None:
        self.set_header("Cache-Control", "no-store")
        header = self.request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            ok = _same(header[len("Bearer ") :], self.token)
        elif self.get_query_argument("token", None) is not None:  # decoded: `?%74oken=` is `?token=` too
            ok = _same(self.get_query_argument("token"), self.token)
        else:
            ok = _same(self.get_cookie(COOKIE) or "", cookie_value(self.token))
        if not ok:
            raise tornado.web.HTTPError(403, reason="Forbidden: a valid admin token is required")
        self.remember_token()  # every route: a token in the URL is swapped for the cookie and a clean URL

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code}: {self._reason}\n")

    def remember_token(self) -> bool:
        """A token given in the URL becomes a cookie (a value derived from it, never the token itself) and leaves
        the address bar; True if the page was redirected."""
        if self.get_query_argument("token", None) is None:
            return False
        forwarded = self.request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        secure = self.request.protocol == "https" or forwarded == "https"
        self.set_cookie(
            COOKIE, cookie_value(self.token), path="/admin", httponly=True, samesite="Strict", secure=secure
        )
        rest = [(k, v) for k, vs in self.request.query_arguments.items() if k != "token" for v in vs]
        query = urllib.parse.urlencode([(k, v.decode("utf-8", "replace")) for k, v in rest])
        self.redirect(self.request.path + ("?" + query if query else ""), status=303)
        return True

    def write_json(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class AdminPage(AdminHandler):
    """`/admin`: the lifecycle diagram with live counts."""

    async def get(self) -> None:
        svg, problem = await self.diagram.get()
        self.render(
            str(ADMIN_DIR / "admin.html"),
            svg=svg,
            problem=problem,
            state_names=state_names(),
            match_states=MATCH_LIVE_STATES,
            match_outcomes=MATCH_OUTCOMES,
            name=self.study.name,
        )


class SessionPage(AdminHandler):
    """`/admin/sessions/<id>`: one participant's path through the machine."""

    def get(self, session_id: str) -> None:
        found = details(self.study, session_id)
        if found is None:
            raise tornado.web.HTTPError(404, reason=f"no session {session_id}")
        self.render(str(ADMIN_DIR / "session.html"), s=found)


class CountsApi(AdminHandler):
    def get(self) -> None:
        self.write_json(counts(self.study))


class LobbyApi(AdminHandler):
    def get(self) -> None:
        self.write_json(lobby_view(self.study))


class SessionsApi(AdminHandler):
    def get(self) -> None:
        self.write_json(live_summary(self.study.sessions.values()))


class SessionApi(AdminHandler):
    def get(self, session_id: str) -> None:
        found = details(self.study, session_id)
        if found is None:
            raise tornado.web.HTTPError(404, reason=f"no session {session_id}")
        self.write_json(found)


class DiagramSvg(AdminHandler):
    async def get(self) -> None:
        svg, problem = await self.diagram.get()
        if svg is None:
            raise tornado.web.HTTPError(503, reason=problem.splitlines()[-1] if problem else "no diagram")
        self.set_header("Content-Type", "image/svg+xml")
        self.finish(svg)


class Events(AdminHandler):
    """`/admin/api/events`: server-sent events, one message whenever the counts change."""

    INTERVAL = 0.5  # seconds between looks at the sessions

    def initialize(self, study: StudyView, token: str, diagram: LifecycleSvg) -> None:
        super().initialize(study, token, diagram)
        self.gone = False

    def on_connection_close(self) -> None:
        self.gone = True

    async def get(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("X-Accel-Buffering", "no")
        last = None
        while not self.gone:
            now = {
                **counts(self.study),
                "recent": live_summary(list(self.study.sessions.values())[-RECENT:]),
                "lobby": lobby_view(self.study),
            }
            changed = {  # times that only grow do not make a message by themselves
                **now,
                "recent": [{k: v for k, v in s.items() if k != "in_state_s"} for s in now["recent"]],
                "lobby": {
                    **now["lobby"],
                    "waiting": [{k: v for k, v in w.items() if k != "waited_s"} for w in now["lobby"]["waiting"]],
                },
            }
            if changed != last:
                last = changed
                self.write(f"data: {json.dumps(now)}\n\n")
                try:
                    await self.flush()
                except StreamClosedError:
                    return
            await asyncio.sleep(self.INTERVAL)


def admin_routes(study: StudyView, token: str) -> list[Any]:
    """The `/admin` URLs, all behind the admin token."""
    deps = {"study": study, "token": token, "diagram": LifecycleSvg()}
    return [
        (r"/admin/?", AdminPage, deps),
        (r"/admin/sessions/([^/]+)", SessionPage, deps),
        (r"/admin/lifecycle\.svg", DiagramSvg, deps),
        (r"/admin/api/counts", CountsApi, deps),
        (r"/admin/api/sessions", SessionsApi, deps),
        (r"/admin/api/lobby", LobbyApi, deps),
        (r"/admin/api/sessions/([^/]+)", SessionApi, deps),
        (r"/admin/api/events", Events, deps),
        (r"/admin/static/(.*)", AdminStatic, {"path": str(ADMIN_DIR), **deps}),
    ]


class AdminStatic(AdminHandler, tornado.web.StaticFileHandler):
    """The admin page's script and style, behind the same token."""

    def initialize(self, path: str, study: StudyView, token: str, diagram: LifecycleSvg) -> None:  # type: ignore[override]
        AdminHandler.initialize(self, study, token, diagram)
        tornado.web.StaticFileHandler.initialize(self, path)
