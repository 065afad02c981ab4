"""Fixtures: the real app on a real socket, and participants that always hang up."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from client.harness import CHROMIUM, launch_chromium
from client.participant import ProtocolClient
from server.app import Config, make_app
from server.examples.gridworld import study as example_study


def pytest_collection_modifyitems(items):
    """Tests that drive Chromium run last, together, so the one shared browser starts once and after the fast tests."""
    items.sort(key=lambda item: "browser" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def browser():
    """One Debian Chromium for every browser test (never a downloaded one); each test opens its own context."""
    from playwright.sync_api import sync_playwright

    assert os.access(CHROMIUM, os.X_OK), "Debian chromium is required: `make test` installs it"
    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture
def config(request, tmp_path) -> Config:
    """The example study on the test server's port; `@pytest.mark.config(field=value)` changes fields for one test."""
    marker = request.node.get_closest_marker("config")
    serving = "http_server" in request.fixturenames  # else no port is bound (an unused one would be left open)
    base = Config(
        experiment=example_study.experiment,
        experiment_file=Path(example_study.__file__),
        data_dir=tmp_path / "data",
        port=request.getfixturevalue("_unused_port")[1] if serving else Config.port,
    )
    return dataclasses.replace(base, **marker.kwargs) if marker else base


@pytest.fixture
def app(config):
    return make_app(config)


@pytest.fixture
def http_server(request, io_loop, _unused_port, app, config):
    """pytest-tornado's server, with the HTTPServer options `python -m server` uses (timeouts, body size)."""
    import tornado.httpserver

    from server.limits import server_options

    server = tornado.httpserver.HTTPServer(app, **server_options(config))
    server.add_socket(_unused_port[0])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=10)


@pytest.fixture
def ws_url(http_server, http_port) -> str:
    return f"ws://127.0.0.1:{http_port}/ws"


@pytest.fixture
def connect(ws_url, io_loop):
    """Open participants; every socket opened is closed when the test ends."""
    opened: list[ProtocolClient] = []

    async def open_one(**kwargs: Any) -> ProtocolClient:
        client = await ProtocolClient.connect(ws_url, timeout=kwargs.pop("timeout", 5.0), **kwargs)
        opened.append(client)
        return client

    yield open_one

    async def close_all() -> None:
        await asyncio.gather(*(client.aclose() for client in opened))

    io_loop.run_sync(close_all, timeout=10)
