"""The participant's page in real Chromium against `python -m server`, offline.

One server and one browser serve the whole module; each test opens its own context
(a fresh profile), so each participant loads Pyodide from our server once.
"""
from __future__ import annotations

import os
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Route, sync_playwright

from server.store import read_records
from tests.support import served

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PING_SECONDS = 1.0
LOAD_TIMEOUT_MS = 90_000
STEP_TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m server` on the built-in example, pinging every second so a dead page is dropped fast."""
    data = tmp_path_factory.mktemp("data")
    with served(data, "--ping-interval", str(PING_SECONDS), "--ping-timeout", str(PING_SECONDS)) as url:
        yield {"url": url, "data": data}


@pytest.fixture(scope="module")
def browser():
    assert os.access(CHROMIUM, os.X_OK), "Debian chromium is required: `make test` installs it"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.requests = []
    ctx.on("request", lambda r: ctx.requests.append(r.url))
    yield ctx
    ctx.close()


def state_is(page, name: str, timeout: int = STEP_TIMEOUT_MS, **where) -> dict:
    cond = " && ".join([f"s.state === '{name}'"] + [f"s.{k} === {v!r}" for k, v in where.items()])
    page.wait_for_function(f"(() => {{ const s = window.__preflight?.state; return s && {cond}; }})()",
                           timeout=timeout)
    return page.evaluate("window.__preflight.state")


def play_to_goal(page) -> None:
    for key in ["ArrowRight"] * 4 + ["ArrowDown"] * 4:
        page.keyboard.press(key)
    state_is(page, "ready", scene_id="gridworld")


def offsite(requests: list[str]) -> list[str]:
    return [u for u in requests if urlparse(u).hostname not in ("127.0.0.1", None) and not u.startswith("data:")]


def test_a_participant_walks_from_the_url_to_the_completion_code_offline(server, context):
    held: list[Route] = []
    context.route("**/wheels/preflight_gridworld*", lambda route: held.append(route))
    page = context.new_page()
    page.goto(server["url"] + "?PROLIFIC_PID=pw-walker&STUDY_ID=s1")

    # While the game's package is held back, the preload is loading and the gate is shut.
    page.wait_for_function("window.__preflight?.state?.regions?.preloading === 'loading'", timeout=LOAD_TIMEOUT_MS)
    page.wait_for_function("document.getElementById('progress-text').textContent.startsWith('Installing packages')",
                           timeout=LOAD_TIMEOUT_MS)
    assert page.is_disabled("#advance")
    assert "Python is still loading" in page.inner_text("#waiting")
    assert page.get_attribute("#progress", "aria-live") == "polite"
    page.evaluate("window.__preflight.send({type: 'advance'})")  # forged from the console
    page.wait_for_function("window.__preflight.errors.length > 0", timeout=STEP_TIMEOUT_MS)
    assert page.evaluate("window.__preflight.errors[0]") == {
        "type": "error", "code": "gated", "state": "preflight",
        "message": "advance must wait: the participant may not move on yet"}
    assert page.evaluate("window.__preflight.state.state") == "preflight"

    for _ in range(200):  # the held request reaches us while Playwright waits
        if held:
            break
        page.wait_for_timeout(50)
    held[0].continue_()
    state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")
    assert page.is_enabled("#advance") and page.inner_text("#progress-text") == "Python is ready"

    page.click("#advance")
    state_is(page, "ready", scene_id="instructions")
    page.click("#advance")
    state_is(page, "in_game")
    play_to_goal(page)
    page.click("#advance")
    state_is(page, "completed")
    assert page.inner_text("#completion-code") == "PREFLIGHT-EXAMPLE"

    assert page.evaluate("window.__preflight.runtime.loads") == 1  # the game reused the preloaded instance
    assert offsite(context.requests) == []
    assert any("/pyodide/314.0.7/pyodide.asm.wasm" in u for u in context.requests)

    [records] = [r for r in map(list, map(read_records, (server["data"] / "sessions").iterdir()))
                 if any(x["kind"] == "begin" and x["participant_id"] == "pw-walker" for x in r)]
    preload = [r for r in records if r["kind"] == "preload"]
    assert [r.get("stage", r["status"]) for r in preload] == ["runtime", "micropip", "packages", "preparing", "ready"]
    assert all(isinstance(r["elapsed_ms"], int) for r in preload)
    assert [r["data"]["action"] for r in records if r["kind"] == "game_event"] == [1] * 4 + [2] * 4


def test_a_failed_preload_is_shown_and_the_game_loads_python_itself(server, context):
    failures = []

    def fail_once(route: Route) -> None:
        if failures:
            route.continue_()
        else:
            failures.append(route.request.url)
            route.abort()

    context.route("**/wheels/preflight_gridworld*", fail_once)
    page = context.new_page()
    page.goto(server["url"])
    state = state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")
    assert state["may_advance"] is True  # an error never traps the participant
    assert page.evaluate("window.__preflight.runtime.status") == "error"
    assert "could not be prepared" in page.inner_text("#progress-text")

    page.click("#advance")
    state_is(page, "ready", scene_id="instructions")
    page.click("#advance")
    state_is(page, "in_game")
    page.wait_for_function("window.__preflight.runtime.status === 'ready'", timeout=LOAD_TIMEOUT_MS)
    play_to_goal(page)
    page.click("#advance")
    state_is(page, "completed")
    assert len(failures) == 1
    assert offsite(context.requests) == []


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
