"""The runtime on a participant's network: compressed copies Chromium accepts, and downloads started with the page.

Browser tests here start their own `python -m server` and share the session's Chromium (tests/conftest.py);
timings are measured by `python -m bench.network`, never asserted here.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Route
from tornado.httpclient import AsyncHTTPClient

from client.harness import served
from server.early_start import PRELOADS
from server.experiment import EndScene, Experiment, StartScene
from server.precompress import DEFAULT_CACHE_DIR, STDLIB_URL, SUFFIXES, Precompressed, stored_stdlib
from server.runtime import DEFAULT_PYODIDE_DIR
from server.store import read_records

LOAD_TIMEOUT_MS = 90_000
STEP_TIMEOUT_MS = 10_000
PYODIDE = "/pyodide/314.0.7/"

# Runs before app.js: when the page handles experiment_config, on its own clock.
CONFIG_TIME = """
(() => {
  let preflight;
  Object.defineProperty(window, "__preflight", { configurable: true, get: () => preflight, set: (obj) => {
    preflight = obj;
    let config;
    Object.defineProperty(obj, "config", { enumerable: true, get: () => config, set: (value) => {
      config = value;
      window.__configAt ??= performance.now();
    } });
  } });
})();
"""


# -- the page as the server renders it ---------------------------------------------------------------------------


async def page_html(port: int, query: str = "") -> str:
    client = AsyncHTTPClient(force_instance=True)
    try:
        return (await client.fetch(f"http://127.0.0.1:{port}/{query}")).body.decode()
    finally:
        client.close()


@pytest.mark.gen_test
async def test_the_page_carries_the_runtime_and_preloads_its_large_files(http_server, http_port, app):
    html = await page_html(http_port, "?PROLIFIC_PID=p1")
    links = re.findall(r'<link rel="preload" href="([^"]+)" as="fetch" crossorigin="anonymous">', html)
    assert links == [PYODIDE + name for name in PRELOADS]
    assert links.index(PYODIDE + "pyodide.asm.wasm") == 0  # the largest starts first
    rendered = re.search(r'<script type="application/json" id="runtime-config">(.*?)</script>', html, re.S)
    assert rendered and json.loads(rendered.group(1)) == app.settings["study"].pyodide_config


@pytest.mark.gen_test
async def test_after_config_the_page_carries_no_runtime(http_server, http_port):
    html = await page_html(http_port, "?preload=after-config")
    assert 'rel="preload"' not in html and "runtime-config" not in html


@pytest.mark.gen_test
@pytest.mark.config(experiment=Experiment("plain", [StartScene(), EndScene(completion_code="P")]))
async def test_a_study_without_python_preloads_nothing(http_server, http_port):
    html = await page_html(http_port)
    assert 'rel="preload"' not in html and "runtime-config" not in html


# -- in Chromium ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime_copies() -> Precompressed:
    """The real runtime's copies in build/precompressed, made now if `make` has not (about 40 s, once)."""
    cache = Precompressed(DEFAULT_CACHE_DIR)
    cache.add(DEFAULT_PYODIDE_DIR)
    stdlib = stored_stdlib(DEFAULT_PYODIDE_DIR, DEFAULT_CACHE_DIR)
    assert stdlib is not None
    cache.add(stdlib)
    cache.index()
    cache.build()
    return cache


def cache_with(copies: Precompressed, target: Path, codings: tuple[str, ...]) -> Path:
    """A cache holding only some codings of the runtime's files; markers keep the server from making the others."""
    target.mkdir()
    for source in copies.sources.values():
        for coding in SUFFIXES:
            if coding in codings and copies.path(source, coding).exists():
                shutil.copy(copies.path(source, coding), target)
            else:
                (target / copies.skipped(source, coding).name).touch()
    return target


def state_is(page, name: str, scene_id: str, timeout: int = STEP_TIMEOUT_MS) -> None:
    state = "window.__preflight?.state"
    page.wait_for_function(f"{state}?.state === '{name}' && {state}.scene_id === '{scene_id}'", timeout=timeout)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# In the page: the wasm compiled as it streams in, the module imported, and what each decoded to.
DECODED = """async (base) => {
  const hex = async (url) => [...new Uint8Array(await crypto.subtle.digest("SHA-256",
    await (await fetch(url)).arrayBuffer()))].map((b) => b.toString(16).padStart(2, "0")).join("");
  const module = await WebAssembly.compileStreaming(fetch(base + "pyodide.asm.wasm"));
  const imported = await import(base + "pyodide.asm.mjs");
  return { exports: WebAssembly.Module.exports(module).length, factory: typeof imported.default,
           wasm: await hex(base + "pyodide.asm.wasm"), mjs: await hex(base + "pyodide.asm.mjs") };
}"""


@pytest.mark.parametrize("coding", ["br", "gzip", None])
def test_chromium_accepts_each_copy_and_decodes_it_to_the_files_bytes(browser, runtime_copies, tmp_path, coding):
    cache = cache_with(runtime_copies, tmp_path / "cache", (coding,) if coding else ())
    with served(tmp_path / "data", "--precompressed-dir", str(cache)) as url:
        context = browser.new_context()
        try:
            page = context.new_page()
            codings = {}
            page.on("response", lambda r: codings.setdefault(r.url.rsplit("/", 1)[-1], r.all_headers()))
            page.goto(url + "client/style.css")  # any page of the origin; the runtime's page would load Python
            decoded = page.evaluate(DECODED, url.rstrip("/") + PYODIDE)
        finally:
            context.close()
    assert codings["pyodide.asm.wasm"].get("content-encoding") == coding
    assert codings["pyodide.asm.mjs"].get("content-encoding") == (coding or "gzip")  # without: Tornado's own gzip
    assert codings["pyodide.asm.wasm"]["content-type"] == "application/wasm"
    assert decoded["exports"] > 1000 and decoded["factory"] == "function"
    assert decoded["wasm"] == sha256(DEFAULT_PYODIDE_DIR / "pyodide.asm.wasm")
    assert decoded["mjs"] == sha256(DEFAULT_PYODIDE_DIR / "pyodide.asm.mjs")


@pytest.fixture(scope="module")
def server(tmp_path_factory, runtime_copies):
    data = tmp_path_factory.mktemp("data")
    with served(data) as url:
        yield {"url": url, "data": data}


def runtime_file(url: str) -> bool:
    return PYODIDE in url or STDLIB_URL in url


def preload_records(data: Path, participant: str) -> list[dict]:
    for path in (data / "sessions").glob("*.msgpack"):
        records = list(read_records(path))
        if any(r["kind"] == "begin" and r.get("participant_id") == participant for r in records):
            return records
    raise LookupError(participant)


def test_the_runtime_downloads_with_the_page_and_reports_once_there_is_a_session(browser, server):
    context = browser.new_context()
    try:
        context.add_init_script(CONFIG_TIME)
        page = context.new_page()
        page.goto(server["url"] + "?PROLIFIC_PID=early")
        state_is(page, "ready", "start", LOAD_TIMEOUT_MS)
        assert page.evaluate("[window.__preflight.runtime.status, window.__preflight.runtime.where]") == [
            "ready",
            "worker",
        ]
        origin = page.evaluate("performance.timeOrigin")
        config_at = page.evaluate("window.__configAt")
        [worker] = page.workers
        on_page = {e["url"].rsplit("/", 1)[-1]: e for e in entries_at(page, origin) if runtime_file(e["url"])}
        in_worker = [e for e in entries_at(worker, origin) if runtime_file(e["url"])]
    finally:
        context.close()
    # The page's preload links asked for the core's large files before the session existed ...
    assert set(on_page) == set(PRELOADS)
    assert all(e["start"] < config_at for e in on_page.values())
    # ... compressed (the stdlib the one repacked with stored members, under its own URL) ...
    assert on_page["pyodide.asm.wasm"]["encoded"] < on_page["pyodide.asm.wasm"]["decoded"] / 3
    assert STDLIB_URL in on_page["python_stdlib.zip"]["url"]
    assert on_page["python_stdlib.zip"]["encoded"] < on_page["python_stdlib.zip"]["decoded"] / 4
    # ... and the runtime in the worker used those downloads: each crossed the wire once.
    assert {e["url"].rsplit("/", 1)[-1] for e in in_worker} >= set(PRELOADS)
    for name in on_page:
        again = sum(e["bytes"] for e in in_worker if e["url"].endswith("/" + name))
        assert again < 1024, f"{name} was downloaded again by the worker ({again} bytes)"
    records = preload_records(server["data"], "early")
    assert [r.get("stage", r["status"]) for r in records if r["kind"] == "preload"] == [
        "runtime",
        "packages",
        "preparing",
        "ready",
    ]
    assert [r for r in records if r["kind"] == "error"] == []  # the settled report was not said twice


def entries_at(where, origin: float) -> list[dict]:
    return where.evaluate(
        """(origin) => performance.getEntriesByType("resource").map((e) => ({
            url: e.name, start: e.startTime + performance.timeOrigin - origin, bytes: e.transferSize,
            encoded: e.encodedBodySize, decoded: e.decodedBodySize }))""",
        origin,
    )


def test_the_page_still_loads_python_when_its_preload_links_fail(browser, server):
    failed: list[str] = []

    def fail_links(route: Route) -> None:
        if route.request.resource_type == "other":  # a <link rel=preload>; the runtime's own requests go through
            failed.append(route.request.url.rsplit("/", 1)[-1])
            return route.abort()
        route.continue_()

    context = browser.new_context()
    try:
        context.route(f"**{PYODIDE}*", fail_links)
        context.route(f"**{STDLIB_URL}**", fail_links)
        page = context.new_page()
        page.goto(server["url"] + "?PROLIFIC_PID=no-links")
        state_is(page, "ready", "start", LOAD_TIMEOUT_MS)
        assert page.evaluate("window.__preflight.runtime.status") == "ready"
    finally:
        context.close()
    assert sorted(failed) == sorted(PRELOADS)
    statuses = [r["status"] for r in preload_records(server["data"], "no-links") if r["kind"] == "preload"]
    assert statuses[-1] == "ready" and "error" not in statuses
