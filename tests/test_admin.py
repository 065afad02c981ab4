"""`/admin`: refused without the token, counts equal to where participants really are, live in Chromium."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from client.harness import ROOT, served
from server.session import Timeouts
from statemachine import state_names
from tests.support import Crowd, bring, true_states

ADMIN_URLS = [
    "/admin",
    "/admin/",
    "/admin/sessions/0123456789abcdef",
    "/admin/lifecycle.svg",
    "/admin/api/counts",
    "/admin/api/sessions",
    "/admin/api/sessions/0123456789abcdef",
    "/admin/api/events",
    "/admin/static/admin.js",
]
PLAN = {  # situation: how many participants stay connected in it (before `hello` there is no session to count)
    "preflight/checking+idle": 9,
    "preflight/passed+idle": 5,
    "preflight/passed+loading": 5,
    "preflight/checking+loading": 4,
    "ready/start": 3,
    "ready/start after a preload error": 2,
    "ready/instructions": 4,
    "in_game": 5,
    "completed": 4,
    "excluded": 4,
}
ENDED = {"completed": 2, "excluded": 1, "preflight/checking+loading": 2}  # ... and these leave again
GRACE = 2.0


def fetch(port: int, path: str, token: str | None = None, **kwargs):
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return AsyncHTTPClient().fetch(
        HTTPRequest(f"http://127.0.0.1:{port}{path}", headers=headers, **kwargs), raise_error=False
    )


async def api(port: int, token: str, path: str) -> dict:
    response = await fetch(port, "/admin/api/" + path, token)
    assert response.code == 200, response.body
    return json.loads(response.body)


async def until(port: int, token: str, accept, what: str, seconds: float = 5.0) -> dict:
    """Poll the counts until `accept` takes them (closing sockets reach the server a moment later)."""
    for _ in range(int(seconds / 0.05)):
        now = await api(port, token, "counts")
        if accept(now):
            return now
        await asyncio.sleep(0.05)
    raise AssertionError(f"counts never showed {what}: {now}")


@pytest.mark.gen_test
async def test_every_admin_url_is_refused_without_the_right_token(http_server, http_port, config):
    token = config.admin_token
    assert len(token) >= 32
    for url in ADMIN_URLS:
        for headers in (
            {},
            {"Authorization": "Bearer " + token[:-1]},
            {"Authorization": "Bearer " + token + "x"},
            {"Authorization": token},
            {"Cookie": "preflight_admin=nope"},
        ):
            response = await fetch(http_port, url, headers=headers, follow_redirects=False)
            assert response.code == 403, (url, headers)
            assert b"admin token" in response.body and b"Traceback" not in response.body
        wrong_query = await fetch(http_port, url + "?token=" + token[::-1], follow_redirects=False)
        assert wrong_query.code == 403
    assert (await fetch(http_port, "/admin/api/counts", token)).code == 200


@pytest.mark.gen_test
async def test_a_token_in_the_url_becomes_a_cookie_and_leaves_the_address_bar(http_server, http_port, config):
    first = await fetch(http_port, "/admin?token=" + config.admin_token, follow_redirects=False)
    assert first.code == 303 and first.headers["Location"] == "/admin"
    assert config.admin_token not in first.headers["Set-Cookie"]  # the cookie holds a value derived from it
    cookie = first.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    page = await fetch(http_port, "/admin", headers={"Cookie": cookie.split(";")[0]})
    assert page.code == 200 and b"<svg" in page.body


@pytest.mark.gen_test(timeout=60)
@pytest.mark.config(timeouts=Timeouts(grace=GRACE))
async def test_fifty_participants_are_counted_where_they_really_are(http_server, http_port, ws_url, config):
    token = config.admin_token
    truth: Counter[str] = Counter()
    situations = [s for s, n in PLAN.items() for _ in range(n)] + [s for s, n in ENDED.items() for _ in range(n)]
    assert len(situations) == 50
    brought = await asyncio.gather(*(bring(ws_url, s, f"p{i:02}") for i, s in enumerate(situations)))
    opened = [(situation, client, last) for situation, (client, last) in zip(situations, brought, strict=False)]
    # Five leave: two after completing and one after being excluded (they linger, resumable for the grace period),
    # two in the middle of the preflight (parked as disconnected).
    leaving = Counter(ENDED)
    for situation, client, last in opened:
        if leaving[situation]:
            leaving[situation] -= 1
            client.close()
            truth.update({"disconnected"} if situation == "preflight/checking+loading" else {"lingering"})
        else:
            truth.update(true_states(last))
    try:
        counts = await until(
            http_port,
            token,
            lambda c: c["states"]["disconnected"] == 2 and c["states"]["lingering"] == 3,
            "2 disconnected, 3 lingering",
        )
        assert counts["live"] == 50
        assert counts["states"] == {name: truth[name] for name in state_names()}
        assert counts["states"]["preflight"] == sum(n for s, n in PLAN.items() if s.startswith("preflight/"))
        assert counts["states"]["in_game"] == PLAN["in_game"]
        assert counts["outcomes"] == {
            "completed": PLAN["completed"] + 2,
            "excluded": PLAN["excluded"] + 1,
            "abandoned": 0,
            "unmatched": 0,
            "partner_lost": 0,
            "preload_error": PLAN["ready/start after a preload error"],
            "timed_out": 0,
        }
        assert counts["excluded_reasons"] == {"screen_too_small": PLAN["excluded"] + 1}
        sessions = await api(http_port, token, "sessions")
        assert len(sessions) == 50 and Counter(s["state"] for s in sessions)["ready"] == 9
    finally:
        for _, client, _ in opened:
            client.close()
    await until(http_port, token, lambda c: c["live"] == 0, "every session ended", seconds=4 * GRACE)
    final = await api(http_port, token, "counts")
    assert final["outcomes"]["abandoned"] == 50 - final["outcomes"]["completed"] - final["outcomes"]["excluded"]


@pytest.mark.gen_test
@pytest.mark.config(timeouts=Timeouts(screening=0.4, preload=0.1))  # preload first: leaving cancels it
async def test_timeouts_are_counted_with_their_reason(http_server, http_port, ws_url, config):
    silent, _ = await bring(ws_url, "preflight/checking+idle", "silent")
    counts = await until(http_port, config.admin_token, lambda c: c["states"]["excluded"] == 1, "the exclusion")
    assert counts["timeouts"] == {"preload_timeout": 1, "screening_timeout": 1}
    assert counts["outcomes"]["timed_out"] == 1 and counts["outcomes"]["preload_error"] == 1  # one session, twice
    assert counts["excluded_reasons"] == {"timeout": 1}
    silent.close()


@pytest.mark.gen_test
@pytest.mark.config(timeouts=Timeouts(grace=0.3))
async def test_one_participants_path_screening_preload_and_scene_order(http_server, http_port, ws_url, config):
    token = config.admin_token
    client, _ = await bring(ws_url, "in_game", "traced")
    [row] = [s for s in await api(http_port, token, "sessions") if s["participant_id"] == "traced"]
    live = await api(http_port, token, f"sessions/{row['session_id']}")
    assert live["live"] is True and live["state"] == "in_game"
    assert [(p["event"], p["dest"]) for p in live["path"]] == [
        ("hello", "preflight"),
        ("screening", "preflight.screening.passed"),
        ("preload", "preflight.preloading.ready"),
        ("settle", "ready"),
        ("advance", "in_game"),
    ]
    assert all(b["at_s"] >= a["at_s"] for a, b in zip(live["path"], live["path"][1:], strict=False))
    assert live["screening"]["verdict"] == [] and live["screening"]["facts"]["screen_width"] == 1920
    assert [p["status"] for p in live["preload"]] == ["ready"] and live["preload"][0]["elapsed_ms"] == 9
    assert live["scene_order"] == ["start", "instructions", "gridworld", "end"]
    assert [s["scene_id"] for s in live["scenes_shown"]] == ["start", "instructions", "gridworld"]

    page = await fetch(http_port, f"/admin/sessions/{row['session_id']}", token)
    assert page.code == 200
    for text in (b"traced", b"in_game", b"preflight.screening.passed", b"screen_width", b"gridworld"):
        assert text in page.body

    client.close()
    await until(http_port, token, lambda c: c["live"] == 0, "the session ended")
    ended = await api(http_port, token, f"sessions/{row['session_id']}")
    assert ended["live"] is False and ended["outcome"] == "abandoned"
    assert ended["path"][:-2] == live["path"]
    assert [(p["event"], p["dest"]) for p in ended["path"][-2:]] == [
        ("drop", "disconnected"),
        ("grace_expired", "abandoned"),
    ]
    for missing in ("0123456789abcdef", "..%2F..%2Fstudy", "XYZ"):
        response = await fetch(http_port, f"/admin/api/sessions/{missing}", token)
        assert response.code == 404 and b"Traceback" not in response.body


@pytest.mark.gen_test(timeout=30)
@pytest.mark.config(timeouts=Timeouts(grace=0.3))
async def test_the_event_stream_pushes_new_counts_when_participants_move(http_server, http_port, ws_url, config):
    events: asyncio.Queue = asyncio.Queue()
    buffer = b""

    def on_chunk(chunk: bytes) -> None:
        nonlocal buffer
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            events.put_nowait(json.loads(event.decode().removeprefix("data: ")))

    stream = fetch(http_port, "/admin/api/events", config.admin_token, streaming_callback=on_chunk, request_timeout=60)
    first = await asyncio.wait_for(events.get(), 5)
    assert first["live"] == 0
    client, _ = await bring(ws_url, "ready/start", "mover")
    while True:
        update = await asyncio.wait_for(events.get(), 5)
        if update["states"]["ready"] == 1:
            break
    assert [s["participant_id"] for s in update["recent"]] == ["mover"]
    client.close()
    while (await asyncio.wait_for(events.get(), 5))["live"] != 0:
        pass
    AsyncHTTPClient().close()
    stream.cancel()


# -- the page in Chromium ------------------------------------------------------------------------------------------

BROWSER_PLAN = {
    "preflight/checking+idle": 3,
    "preflight/passed+loading": 2,
    "ready/start": 1,
    "in_game": 2,
    "completed": 1,
    "excluded": 1,
}
TOKEN = "browser-test-admin-token-0123456789"


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("admin-data")
    with served(data, "--admin-token", TOKEN) as url:
        yield url


def test_the_admin_page_draws_the_lifecycle_with_live_counts(admin_server, browser):
    crowd = Crowd()
    ws = admin_server.replace("http", "ws") + "ws"
    truth: Counter[str] = Counter()
    try:
        for i, situation in enumerate(s for s, n in BROWSER_PLAN.items() for _ in range(n)):
            truth.update(true_states(crowd.bring(ws, situation, f"b{i:02}")))
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            refused = context.new_page().goto(admin_server + "admin")
            assert refused.status == 403 and "admin token" in refused.text()

            page = context.new_page()
            page.goto(admin_server + "admin?token=" + TOKEN)
            assert page.url == admin_server + "admin"  # the token left the address bar for a cookie
            page.wait_for_function(f"window.__admin?.data?.live === {sum(BROWSER_PLAN.values())}", timeout=10_000)
            assert page.locator("#diagram svg g.cluster").count() >= 3
            for name in state_names():
                row = page.inner_text(f'#states tr[data-state="{name}"] .n')
                badge = page.locator(f'#diagram svg .badge[data-state="{name}"] text').text_content()
                assert int(row) == int(badge) == truth[name], name
            assert page.inner_text('#outcomes tr[data-outcome="excluded"] .n') == "1"
            assert page.locator("#diagram svg .badge").count() == len(state_names())
            if os.environ.get("PREFLIGHT_SCREENSHOTS"):  # refresh docs/admin.png on purpose, not on every run
                page.screenshot(path=str(ROOT / "docs" / "admin.png"), full_page=True)

            # Live: one more participant reaches the game while the page stays loaded.
            updates = page.evaluate("window.__admin.updates")
            crowd.bring(ws, "in_game", "late")
            page.wait_for_function("window.__admin.data.states.in_game === 3", timeout=10_000)
            assert page.evaluate("window.__admin.updates") > updates
            assert page.locator('#diagram svg .badge[data-state="in_game"] text').text_content() == "3"

            page.locator("#sessions tr", has_text="late").locator("a").click()
            page.wait_for_selector("#path")
            assert page.inner_text("#participant") == "late" and page.inner_text("#state") == "in_game"
            steps = page.locator("#path tbody tr").all_inner_texts()
            assert [s.split("\t")[2] for s in steps] == ["hello", "screening", "preload", "settle", "advance"]
            assert page.locator("#scenes li").all_inner_texts() == ["start", "instructions", "gridworld", "end"]
        finally:
            context.close()
    finally:
        crowd.close()
