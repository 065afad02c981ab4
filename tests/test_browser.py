"""The participant's page in real Chromium against `python -m server`, offline.

One server serves the whole module and the suite shares one browser (tests/conftest.py);
each test opens its own context (a fresh profile), so each participant loads Pyodide from
our server once, except where a test reloads the page or kills the runtime's worker on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Route

from client.harness import ROOT, records_of, served, sessions_by_participant
from server.early_start import PRELOADS
from server.export import export
from server.game_contract import replay

PING_SECONDS = 1.0
LOAD_TIMEOUT_MS = 90_000
STEP_TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m server` on the built-in example, pinging every second so a dead page is dropped fast."""
    data = tmp_path_factory.mktemp("data")
    with served(data, "--ping-interval", str(PING_SECONDS), "--ping-timeout", str(PING_SECONDS)) as url:
        yield {"url": url, "data": data}


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.requests = []
    ctx.on("request", lambda r: ctx.requests.append(r.url))
    yield ctx
    ctx.close()


def state_is(page, name: str, timeout: int = STEP_TIMEOUT_MS, **where) -> dict:
    cond = " && ".join([f"s.state === '{name}'"] + [f"s.{k} === {v!r}" for k, v in where.items()])
    page.wait_for_function(f"(() => {{ const s = window.__preflight?.state; return s && {cond}; }})()", timeout=timeout)
    return page.evaluate("window.__preflight.state")


def play_from_instructions_to_the_end(page) -> None:
    page.click("#advance")
    state_is(page, "in_game")
    play_to_goal(page)
    page.click("#advance")
    state_is(page, "completed")
    assert page.inner_text("#completion-code") == "PREFLIGHT-EXAMPLE"


def play_to_goal(page) -> None:
    page.wait_for_function("window.__preflight.firstFrameAt !== null", timeout=LOAD_TIMEOUT_MS)  # keys are read
    for key in ["ArrowRight"] * 4 + ["ArrowDown"] * 4:
        page.keyboard.press(key)
    state_is(page, "ready", scene_id="gridworld")


# Notes, in the page, what it asks of each worker it starts: the message interface's `op`s, in order.
WORKER_LOG = """
(() => {
  const log = window.__workerLog = { started: [], ops: [] };
  const Native = window.Worker;
  window.Worker = class extends Native {
    constructor(url, options) { super(url, options); log.started.push(String(url)); }
    postMessage(message, ...rest) { log.ops.push(message?.op); return super.postMessage(message, ...rest); }
  };
})();
"""


def enter_the_game(page) -> list:
    """Start, then Continue into the game; once the game's runtime is ready, where it runs: [where, workers, loads]."""
    page.click("#advance")
    state_is(page, "ready", scene_id="instructions")
    page.click("#advance")
    state_is(page, "in_game")
    page.wait_for_function("window.__preflight.runtime.status === 'ready'", timeout=LOAD_TIMEOUT_MS)
    return page.evaluate("(({where, workers, loads}) => [where, workers, loads])(window.__preflight.runtime)")


def resources(where) -> list[str]:
    """The URLs a page or a worker fetched itself, from its own Resource Timing buffer."""
    return where.evaluate("performance.getEntriesByType('resource').map((e) => e.name)")


def played(records: list[dict]) -> list[dict]:
    """Every step the participant's game sent, in order, from its batches."""
    return [step for r in records if r["kind"] == "steps" for step in r["steps"]]


def preload_statuses(records: list[dict]) -> list[tuple[str, str | None]]:
    return [(r["status"], r.get("error")) for r in records if r["kind"] == "preload"]


def offsite(requests: list[str]) -> list[str]:
    return [u for u in requests if urlparse(u).hostname not in ("127.0.0.1", None) and not u.startswith("data:")]


GAME_PACKAGE = "**/local-wheels/preflight_local_gridworld_env*"


def hold_the_game_package(context) -> list[Route]:
    """The page's requests for the game's package, held unanswered (its preload stays in `packages`) until continued."""
    held: list[Route] = []
    context.route(GAME_PACKAGE, lambda route: held.append(route))
    return held


def until_held(page, held: list[Route]) -> None:
    """Until the held request reaches us: it does while Playwright waits."""
    for _ in range(200):
        if held:
            return
        page.wait_for_timeout(50)


def test_a_participant_walks_from_the_url_to_the_completion_code_offline(server, context):
    held = hold_the_game_package(context)
    page = context.new_page()
    page.goto(server["url"] + "?PROLIFIC_PID=pw-walker&STUDY_ID=s1")

    # While the game's package is held back, the preload is loading and the gate is shut.
    page.wait_for_function("window.__preflight?.state?.regions?.preloading === 'loading'", timeout=LOAD_TIMEOUT_MS)
    page.wait_for_function(
        "document.getElementById('progress-text').textContent.startsWith('Installing packages')",
        timeout=LOAD_TIMEOUT_MS,
    )
    assert page.is_disabled("#advance")
    assert "Python is still loading" in page.inner_text("#hint")
    assert page.get_attribute("#progress", "aria-live") == "polite"
    page.evaluate("window.__preflight.send({type: 'advance'})")  # forged from the console
    page.wait_for_function("window.__preflight.errors.length > 0", timeout=STEP_TIMEOUT_MS)
    assert page.evaluate("window.__preflight.errors[0]") == {
        "type": "error",
        "code": "gated",
        "state": "preflight",
        "message": "advance must wait: the participant may not move on yet",
    }
    assert page.evaluate("window.__preflight.state.state") == "preflight"

    until_held(page, held)
    held[0].continue_()
    state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")
    assert page.is_enabled("#advance") and page.inner_text("#progress-text") == "Python is ready"

    page.click("#advance")
    state_is(page, "ready", scene_id="instructions")
    play_from_instructions_to_the_end(page)

    assert page.evaluate("window.__preflight.runtime.loads") == 1  # the game reused the preloaded instance
    assert offsite(context.requests) == []
    assert any("/pyodide/314.0.7/pyodide.asm.wasm" in u for u in context.requests)

    records = records_of(server["data"], "pw-walker")
    preload = [r for r in records if r["kind"] == "preload"]
    assert [r.get("stage", r["status"]) for r in preload] == ["runtime", "packages", "preparing", "ready"]
    assert all(isinstance(r["elapsed_ms"], int) for r in preload)
    steps = played(records)
    assert [s["action"] for s in steps] == [1] * 4 + [2] * 4
    assert [(s["episode"], s["step"]) for s in steps] == [(0, n) for n in range(1, 9)]
    assert all(isinstance(s["t"], int) and s["visible"] is True for s in steps)
    assert steps[-1]["terminated"] is True and sum(s["reward"] for s in steps) == pytest.approx(0.93)
    [over] = [r for r in records if r["kind"] == "game_over"]
    assert over["check"] == {"reported_steps": 8, "received_steps": 8, "complete": True}
    [scene] = [r for r in records if r["kind"] == "scene" and r["scene_id"] == "gridworld"]
    with pytest.MonkeyPatch.context() as patch:  # the same episode again, in CPython, from the recorded seed
        patch.syspath_prepend(str(ROOT / "server" / "examples" / "gridworld"))
        [again] = replay("gridworld_env:make", {}, [(scene["seeds"][0], [s["action"] for s in steps])])
    assert [(r["reward"], r["terminated"]) for r in again] == [(s["reward"], s["terminated"]) for s in steps]


def test_python_lives_in_one_worker_and_the_game_steps_through_it(server, context):
    context.add_init_script(WORKER_LOG)
    page = context.new_page()
    page.goto(server["url"] + "?PROLIFIC_PID=pw-worker")
    state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")
    [worker] = page.workers
    assert worker.url.endswith("/client/runtime-worker.js")
    assert page.evaluate("[window.__preflight.runtime.where, window.__preflight.runtime.workers]") == ["worker", 1]
    # Pyodide was fetched (and so compiled and run) by the worker; the page only preloaded the core's files for it.
    assert any(u.endswith("/pyodide/314.0.7/pyodide.asm.wasm") for u in resources(worker))
    assert any("/local-wheels/preflight_local_gridworld_env-" in u for u in resources(worker))
    preloaded = {u.rsplit("/", 1)[-1] for u in resources(page) if "/pyodide/" in u or "/stdlib/" in u}
    assert preloaded == set(PRELOADS)  # its preload links (the stdlib the repacked one)
    assert not [u for u in resources(worker) if "micropip" in u or "/simple/" in u]  # the wheel unpacked, no installer
    assert not [u for u in resources(page) if "wheels/" in u]

    page.click("#advance")
    state_is(page, "ready", scene_id="instructions")
    page.click("#advance")
    state_is(page, "in_game")
    play_to_goal(page)
    # The game ran in the same worker: one `play`, the keys sent to it as `input`, the steps drawn from its frames.
    log = page.evaluate("window.__workerLog")
    assert log["started"] == ["/client/runtime-worker.js"]
    assert log["ops"][:2] == ["load", "play"] and set(log["ops"][2:]) <= {"input"} and len(log["ops"]) >= 2 + 8
    assert page.workers == [worker]
    assert [s["step"] for s in played(records_of(server["data"], "pw-worker"))] == list(range(1, 9))

    page.reload()  # the old page's worker goes with it; the new page resumes the session and starts its own
    state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="gridworld")
    page.wait_for_function("window.__workerLog.started.length === 1", timeout=STEP_TIMEOUT_MS)
    [fresh] = page.workers
    assert fresh != worker
    closed: list = []
    fresh.on("close", lambda w: closed.append(w))
    page.evaluate("dispatchEvent(new PageTransitionEvent('pagehide'))")  # what leaving the page fires first
    for _ in range(100):
        if closed:
            break
        page.wait_for_timeout(50)
    assert closed == [fresh] and page.workers == []


def test_a_failed_preload_is_shown_and_the_game_loads_python_itself(server, context):
    failures = []

    def fail_once(route: Route) -> None:
        if failures:
            route.continue_()
        else:
            failures.append(route.request.url)
            route.abort()

    context.route("**/local-wheels/preflight_local_gridworld_env*", fail_once)
    page = context.new_page()
    page.goto(server["url"])
    state = state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")
    assert state["may_advance"] is True  # an error never traps the participant
    assert page.evaluate("window.__preflight.runtime.status") == "error"
    assert "could not be prepared" in page.inner_text("#progress-text")
    worker = page.workers[0]

    # The worker survived a failed download, so the game retries in it and keeps the loaded interpreter.
    assert enter_the_game(page) == ["worker", 1, 1]
    assert page.workers == [worker]
    play_to_goal(page)
    page.click("#advance")
    state_is(page, "completed")
    assert len(failures) == 1
    assert offsite(context.requests) == []


def test_a_crashed_worker_is_an_error_and_the_game_loads_python_in_a_new_one(server, context):
    crashed = []

    def crash_first(route: Route) -> None:
        if crashed:
            return route.continue_()
        crashed.append(route.request.url)
        script = route.fetch().text() + (
            "\nself.addEventListener('message', () => setTimeout(() => { throw new Error('injected crash'); }, 20));\n"
        )
        route.fulfill(status=200, content_type="text/javascript", body=script)

    context.route("**/client/runtime-worker.js", crash_first)
    page = context.new_page()
    page.goto(server["url"] + "?PROLIFIC_PID=pw-crash")
    state = state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")
    assert state["may_advance"] is True
    assert page.evaluate("window.__preflight.runtime.status") == "error"
    assert "could not be prepared" in page.inner_text("#progress-text")
    assert page.workers == []  # the crashed worker was terminated

    assert enter_the_game(page)[:2] == ["worker", 2]
    assert len(page.workers) == 1
    play_to_goal(page)
    assert len(crashed) == 1

    statuses = preload_statuses(records_of(server["data"], "pw-crash"))
    assert ("error", "the Python worker stopped: Uncaught Error: injected crash") in statuses
    assert statuses[-1] == ("ready", None)


def test_a_preload_the_server_stopped_waiting_for_is_ended_and_the_game_loads_python_in_a_new_worker(tmp_path, context):
    held: list[Route] = []

    def hold_first(route: Route) -> None:
        if held:
            return route.continue_()
        held.append(route)  # never answered: the first worker waits for it until it is ended

    context.route("**/local-wheels/preflight_local_gridworld_env*", hold_first)
    with served(tmp_path / "data", "--preload-timeout", "2") as url:
        page = context.new_page()
        page.goto(url + "?PROLIFIC_PID=pw-stuck")
        state = state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")
        assert state["may_advance"] is True
        for _ in range(200):  # the first worker is now stuck on the wheel that never comes
            if held:
                break
            page.wait_for_timeout(50)
        assert held and page.evaluate("window.__preflight.runtime.status") == "loading"
        page.wait_for_function(  # the participant may go on, and is told why Python still loads
            "document.getElementById('progress-text').textContent.includes('taking longer than expected')",
            timeout=STEP_TIMEOUT_MS,
        )

        assert enter_the_game(page)[:2] == ["worker", 2]
        play_to_goal(page)
        assert len(held) == 1 and len(page.workers) == 1

        statuses = preload_statuses(records_of(tmp_path / "data", "pw-stuck"))
        assert ("error", "timeout") in statuses
        assert ("error", "the Python worker stopped: the preload did not finish in time") in statuses
        assert statuses[-1] == ("ready", None)


def test_without_a_worker_the_game_loads_python_on_the_main_thread(server, context):
    blocked = []
    context.route("**/client/runtime-worker.js", lambda route: (blocked.append(route.request.url), route.abort()))
    page = context.new_page()
    page.goto(server["url"] + "?PROLIFIC_PID=pw-noworker")
    state = state_is(page, "ready", scene_id="start")
    assert state["may_advance"] is True
    assert page.evaluate("window.__preflight.runtime.status") == "error"

    assert enter_the_game(page) == ["main", 1, 1]
    assert any(u.endswith("/pyodide/314.0.7/pyodide.asm.wasm") for u in resources(page))
    play_to_goal(page)
    assert len(blocked) == 1 and page.workers == []

    statuses = preload_statuses(records_of(server["data"], "pw-noworker"))
    assert statuses[0] == ("error", "the Python worker stopped: could not start")
    assert statuses[-1] == ("ready", None)


def test_a_dropped_connection_and_a_reload_resume_the_session_where_it_was(server, context):
    page = context.new_page()
    page.goto(server["url"] + "?PROLIFIC_PID=pw-resumer")
    state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")
    page.click("#advance")
    state_is(page, "ready", scene_id="instructions")

    page.evaluate("window.__preflight.socket.close()")  # the network drops the connection
    page.wait_for_function("window.__preflight.connections === 2", timeout=STEP_TIMEOUT_MS)
    state_is(page, "ready", scene_id="instructions")
    assert page.is_enabled("#advance") and page.is_hidden("#notice")

    page.reload()  # the page forgets everything; the session does not
    state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="instructions")
    assert page.inner_text("#title") == "How to play"
    play_from_instructions_to_the_end(page)

    page.reload()  # on the end page: the code again, and no button or Python loading under it
    state_is(page, "completed", timeout=LOAD_TIMEOUT_MS)
    assert page.inner_text("#completion-code") == "PREFLIGHT-EXAMPLE"
    assert page.is_hidden("#advance") and page.is_hidden("#progress")

    records = records_of(server["data"], "pw-resumer")
    assert [r["last_seq"] for r in records if r["kind"] == "resumed"][1] == 0  # the reload asked for everything
    assert len([r for r in records if r["kind"] == "begin"]) == 1

    other_tab = context.new_page()  # a new tab from the same link has no token: it cannot start again
    other_tab.goto(server["url"] + "?PROLIFIC_PID=pw-resumer")
    other_tab.wait_for_function("!document.getElementById('notice').hidden", timeout=STEP_TIMEOUT_MS)
    assert "already taken part" in other_tab.inner_text("#notice")


def test_a_reload_during_the_preload_or_the_game_neither_opens_the_gate_nor_skips_the_game(server, context):
    held = hold_the_game_package(context)
    page = context.new_page()
    page.goto(server["url"] + "?PROLIFIC_PID=pw-reloader")
    page.wait_for_function("window.__preflight?.state?.regions?.preloading === 'loading'", timeout=LOAD_TIMEOUT_MS)
    until_held(page, held)  # the page is installing the game's package when it reloads
    context.unroute(GAME_PACKAGE)
    page.reload()  # the old page's worker dies with it: that is not a failed preload
    state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")
    assert page.inner_text("#progress-text") == "Python is ready"
    records = records_of(server["data"], "pw-reloader")
    assert [status for status, _ in preload_statuses(records)].count("error") == 0
    assert preload_statuses(records)[-1] == ("ready", None)

    enter_the_game(page)
    page.wait_for_function("window.__preflight.firstFrameAt !== null", timeout=LOAD_TIMEOUT_MS)
    for key in ["ArrowRight"] * 2:
        page.keyboard.press(key)
    for _ in range(100):  # a turn's steps leave while the game waits for the next key
        if len(played(records_of(server["data"], "pw-reloader"))) == 2:
            break
        page.wait_for_timeout(50)
    page.reload()  # mid-game: the game starts again from its first step, it is not skipped
    state_is(page, "in_game", timeout=LOAD_TIMEOUT_MS)
    assert page.is_disabled("#advance")
    play_to_goal(page)
    page.click("#advance")
    state_is(page, "completed")

    records = records_of(server["data"], "pw-reloader")
    [over] = [r for r in records if r["kind"] == "game_over"]
    assert over["data"]["restarted"] is True and "failed" not in over["data"]
    steps = [(s["episode"], s["step"]) for s in played(records)]
    first = steps.index((0, 1), 1)  # where the game began again
    assert first >= 2 and steps[first:] == [(0, n) for n in range(1, 9)]
    assert over["check"] == {"reported_steps": len(steps), "received_steps": len(steps), "complete": True}


def test_a_session_that_ended_while_away_starts_afresh_and_its_old_game_sends_nothing_to_the_new_one(tmp_path, context):
    data = tmp_path / "data"
    with served(data, "--grace", "1") as url:
        page = context.new_page()
        page.goto(url + "?PROLIFIC_PID=pw-away")
        state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")
        enter_the_game(page)
        page.wait_for_function("window.__preflight.firstFrameAt !== null", timeout=LOAD_TIMEOUT_MS)
        context.set_offline(True)  # the participant is away longer than --grace, the game still on their page
        page.evaluate("window.__preflight.socket.close()")
        for _ in range(200):
            [old] = sessions_by_participant(data)["pw-away"]
            if any(r["kind"] == "outcome" for r in old):
                break
            page.wait_for_timeout(50)
        page.keyboard.press("ArrowRight")  # played in the old session's game while it is gone
        context.set_offline(False)
        page.wait_for_function(
            "document.getElementById('notice').textContent.includes('ended while you were away')",
            timeout=LOAD_TIMEOUT_MS,
        )
        state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")
        sessions = sessions_by_participant(data)["pw-away"]
    old, new = sorted(sessions, key=lambda records: records[0]["t"])
    assert [r["outcome"] for r in old if r["kind"] == "outcome"] == ["abandoned"]
    assert played(new) == [] and not [r for r in new if r["kind"] == "game_over"]


def test_a_phone_is_excluded_with_the_message_and_nothing_to_press(server, browser):
    phone = browser.new_context(
        viewport={"width": 390, "height": 844},
        screen={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        user_agent="Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.0 Mobile/15E148 Safari/604.1",
    )
    try:
        page = phone.new_page()
        page.goto(server["url"] + "?PROLIFIC_PID=pw-phone")
        excluded = state_is(page, "excluded", timeout=LOAD_TIMEOUT_MS)
        assert set(excluded["reason"].split(",")) == {"mobile", "screen_too_small"}
        page.wait_for_function("window.__preflight.runtime?.status === 'ready'", timeout=LOAD_TIMEOUT_MS)
        assert "cannot run in your browser or on your device" in page.inner_text("body")
        assert page.is_hidden("#advance") and page.is_hidden("#progress")  # and Python's load is not shown
    finally:
        phone.close()


def test_the_connection_survives_a_main_thread_blocked_longer_than_the_ping_timeout(server, context):
    page = context.new_page()
    page.goto(server["url"])
    state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")
    blocked = page.evaluate("""() => {
        const t0 = performance.now();
        while (performance.now() - t0 < 5000) {}
        return performance.now() - t0;
    }""")
    assert blocked >= 5000 > 4 * PING_SECONDS * 1000
    page.click("#advance")
    state = state_is(page, "ready", scene_id="instructions")
    assert state["may_advance"] is True
    assert page.evaluate("document.getElementById('notice').hidden")


def exported_steps(data: Path, participant_id: str, out: Path) -> list[int]:
    """The steps `python -m server export` writes for one participant, in order."""
    export(data, "jsonl", out)
    rows = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["participant_id"] == participant_id]


def test_a_connection_dropped_mid_game_resumes_the_one_game_without_losing_or_doubling_a_step(
    server, context, tmp_path
):
    page = context.new_page()
    page.goto(server["url"] + "?PROLIFIC_PID=pw-midgame")
    state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")
    enter_the_game(page)
    page.wait_for_function("window.__preflight.firstFrameAt !== null", timeout=LOAD_TIMEOUT_MS)
    for key in ["ArrowRight"] * 4:
        page.keyboard.press(key)
    page.wait_for_function("window.__preflight.steps === 4", timeout=STEP_TIMEOUT_MS)
    for _ in range(100):  # a batch leaves within 250 ms; the drop comes once the server holds all four
        if len(played(records_of(server["data"], "pw-midgame"))) == 4:
            break
        page.wait_for_timeout(50)

    page.evaluate("window.__preflight.socket.close()")  # the network drops the connection in the middle of the game
    page.wait_for_function("window.__preflight.connections === 2", timeout=STEP_TIMEOUT_MS)
    state_is(page, "in_game")  # the server says so again after the resume; the page must not start a second game
    for key in ["ArrowDown"] * 4:
        page.keyboard.press(key)
    state_is(page, "ready", scene_id="gridworld")

    assert page.evaluate("window.__preflight.games") == 1
    assert exported_steps(server["data"], "pw-midgame", tmp_path / "export") == [1, 2, 3, 4, 5, 6, 7, 8]


def test_a_connection_dropped_during_the_preload_still_lets_the_server_hear_it_ended(server, context, tmp_path):
    held: list[Route] = []
    context.route("**/local-wheels/preflight_local_gridworld_env*", lambda route: held.append(route))
    page = context.new_page()
    page.goto(server["url"] + "?PROLIFIC_PID=pw-preload-drop")
    page.wait_for_function("window.__preflight?.state?.regions?.preloading === 'loading'", timeout=LOAD_TIMEOUT_MS)
    page.wait_for_function(
        "document.getElementById('progress-text').textContent.startsWith('Installing packages')",
        timeout=LOAD_TIMEOUT_MS,
    )
    for _ in range(100):  # the wheel's request reaches the route a moment after the stage is shown
        if held:
            break
        page.wait_for_timeout(50)
    assert held

    # The connection drops; the preload finishes while it is down, so its `ready` report never reaches the server.
    page.evaluate("window.__preflight.socket.close()")
    for route in held:
        route.continue_()
    page.wait_for_function("window.__preflight.runtime.status === 'ready'", timeout=LOAD_TIMEOUT_MS)
    page.wait_for_function("window.__preflight.connections === 2", timeout=STEP_TIMEOUT_MS)
    state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")

    page.click("#advance")
    state_is(page, "ready", scene_id="instructions")
    page.click("#advance")
    state_is(page, "in_game")
    play_to_goal(page)
    assert page.evaluate("[window.__preflight.games, window.__preflight.runtime.loads]") == [1, 1]
    records = records_of(server["data"], "pw-preload-drop")
    assert preload_statuses(records)[-1] == ("ready", None)
    kinds = [r["kind"] if r["kind"] != "preload" else r["status"] for r in records]
    assert kinds.index("resumed") < kinds.index("ready")  # the report lost with the connection was said again
    assert exported_steps(server["data"], "pw-preload-drop", tmp_path / "export") == [1, 2, 3, 4, 5, 6, 7, 8]


def test_steps_in_flight_when_the_connection_drops_are_resent_and_stored_once(server, context, tmp_path):
    page = context.new_page()
    page.goto(server["url"] + "?PROLIFIC_PID=pw-inflight")
    state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")
    enter_the_game(page)
    page.wait_for_function("window.__preflight.firstFrameAt !== null", timeout=LOAD_TIMEOUT_MS)
    # The network swallows what the page sends from here on: batches leave but never arrive. (A turn-based game
    # sends a batch with the first step 250 ms after the last batch, hence the pauses.)
    page.evaluate("window.__preflight.socket.send = () => {}")
    for key in ["ArrowRight"] * 4:
        page.keyboard.press(key)
        page.wait_for_timeout(300)
    page.wait_for_function("window.__preflight.steps === 4", timeout=STEP_TIMEOUT_MS)
    page.wait_for_function("window.__preflight.pending() >= 3", timeout=STEP_TIMEOUT_MS)  # sent, unconfirmed
    stored = sessionStorage_pending(page)
    assert stored and all(item["n"] > 0 for item in stored)  # kept across a reload too

    page.evaluate("window.__preflight.socket.close()")
    page.wait_for_function("window.__preflight.connections === 2", timeout=STEP_TIMEOUT_MS)
    page.wait_for_function("window.__preflight.pending() === 0", timeout=STEP_TIMEOUT_MS)
    state_is(page, "in_game")
    for key in ["ArrowDown"] * 4:
        page.keyboard.press(key)
    state_is(page, "ready", scene_id="gridworld")

    assert exported_steps(server["data"], "pw-inflight", tmp_path / "export") == [1, 2, 3, 4, 5, 6, 7, 8]
    over = [r for r in records_of(server["data"], "pw-inflight") if r["kind"] == "game_over"]
    assert [r["check"]["complete"] for r in over] == [True]
    assert not [r for r in records_of(server["data"], "pw-inflight") if r["kind"] == "gap"]


def sessionStorage_pending(page) -> list[dict]:
    return page.evaluate(
        "Object.keys(sessionStorage).filter((k) => k.startsWith('preflight.pending:'))"
        ".flatMap((k) => JSON.parse(sessionStorage.getItem(k)).items)"
    )
