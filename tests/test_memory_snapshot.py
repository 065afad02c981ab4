"""The opt-in memory snapshot: named by what it was made from, offered only when it matches, restored or fallen from."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
from tornado.httpclient import AsyncHTTPClient

from client.harness import ROOT, served
from server.app import Config, make_app
from server.experiment import EndScene, Experiment, StartScene
from server.memory_snapshot import snapshot_name, wheel_digests
from server.store import read_records

LOAD_TIMEOUT_MS = 90_000
pytestmark = pytest.mark.config(memory_snapshot=True)


def name_for(config: Config) -> str | None:
    study = make_app(config).settings["study"]
    return snapshot_name(config, study.pyodide_config, wheel_digests(study))


@pytest.fixture
def config(config, tmp_path) -> Config:
    """The example study (tests/conftest.py) with its snapshots kept in this test's directory."""
    return dataclasses.replace(config, snapshot_dir=tmp_path / "snapshots")


def test_the_name_follows_what_the_snapshot_was_made_from(config, tmp_path):
    name = name_for(config)
    assert name and re.fullmatch(r"[0-9a-f]{32}\.bin", name)
    assert name_for(dataclasses.replace(config, data_dir=tmp_path / "elsewhere")) == name  # not from the data
    other = Experiment("other", [StartScene(), EndScene()])  # another runtime config: no Python at all
    assert name_for(dataclasses.replace(config, experiment=other)) != name
    assert snapshot_name(dataclasses.replace(config, pyodide_url="https://cdn.example.org/pyodide/"), {}, {}) is None


async def page_of(port: int) -> str:
    client = AsyncHTTPClient(force_instance=True)
    try:
        return (await client.fetch(f"http://127.0.0.1:{port}/")).body.decode()
    finally:
        client.close()


@pytest.fixture
def snapshot_file(config):
    """A stand-in file under the name the runtime asks for (its content is the page's business)."""
    config.snapshot_dir.mkdir()
    path = config.snapshot_dir / str(name_for(config))
    path.write_bytes(b"PFMS" + bytes(4096))
    return path


@pytest.fixture
def other_snapshot(config):
    config.snapshot_dir.mkdir()
    (config.snapshot_dir / "0123456789abcdef0123456789abcdef.bin").write_bytes(b"made for another runtime")


@pytest.mark.gen_test
async def test_a_matching_snapshot_is_offered_preloaded_and_served_for_a_year(snapshot_file, http_server, http_port):
    html = await page_of(http_port)
    url = f"/memory-snapshot/{snapshot_file.name}"
    rendered = re.search(r'id="runtime-config">(.*?)</script>', html, re.S)
    assert rendered and json.loads(rendered.group(1))["snapshot_url"] == url
    assert f'<link rel="preload" href="{url}"' in html
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(f"http://127.0.0.1:{http_port}{url}")
    finally:
        client.close()
    assert response.body == snapshot_file.read_bytes()
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"


@pytest.mark.gen_test
async def test_without_a_snapshot_for_this_runtime_none_is_offered(other_snapshot, http_server, http_port, caplog):
    html = await page_of(http_port)
    assert "snapshot_url" not in html and "memory-snapshot" not in html
    assert any("no memory snapshot for this runtime" in r.getMessage() for r in caplog.get_records("setup"))


@pytest.mark.gen_test
@pytest.mark.config(memory_snapshot=False)
async def test_without_the_flag_none_is_offered(snapshot_file, http_server, http_port):
    assert "memory-snapshot" not in await page_of(http_port)


def preload_reports(data, participant: str) -> list[dict]:
    for path in (data / "sessions").glob("*.msgpack"):
        records = list(read_records(path))
        if any(r["kind"] == "begin" and r.get("participant_id") == participant for r in records):
            return [r for r in records if r["kind"] == "preload"]
    raise LookupError(participant)


def test_a_page_restores_the_snapshot_and_falls_back_when_it_is_broken(browser, tmp_path):
    snapshots = tmp_path / "snapshots"
    flags = ("--snapshot-dir", str(snapshots), "--no-precompressed")
    subprocess.run(  # what a researcher runs, in a process of its own (this one drives the shared browser)
        [sys.executable, "-m", "server", "snapshot", "--data-dir", str(tmp_path / "making"), *flags],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=LOAD_TIMEOUT_MS / 1000,
    )
    [made] = snapshots.glob("*.bin")
    with served(tmp_path / "data", "--memory-snapshot", *flags) as url:
        for participant in ("restored", "broken"):
            if participant == "broken":
                made.write_bytes(made.read_bytes()[: made.stat().st_size // 2])  # cut short, as a failed copy would be
            context = browser.new_context()
            try:
                page = context.new_page()
                page.goto(f"{url}?PROLIFIC_PID={participant}")
                page.wait_for_function(
                    "window.__preflight?.state?.state === 'ready' && window.__preflight.state.scene_id === 'start'",
                    timeout=LOAD_TIMEOUT_MS,
                )
                settled = page.evaluate("window.__preflight.runtime.settled")
                fetched = page.workers[0].evaluate("performance.getEntriesByType('resource').map((e) => e.name)")
            finally:
                context.close()
            assert settled["status"] == "ready"
            wheels = [u for u in fetched if "wheels/" in u]  # the wheelhouse's, or the study's own
            if participant == "restored":
                assert settled["snapshot"] == "restored"
                assert wheels == []  # nothing installed: the packages came in the snapshot
            else:
                assert settled["snapshot"].startswith("not used: ")
                assert wheels  # the plain load ran instead
            reports = preload_reports(tmp_path / "data", participant)
            assert reports[-1]["status"] == "ready" and reports[-1]["snapshot"] == settled["snapshot"]
