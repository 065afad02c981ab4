"""Fixtures: the real app on a real socket, and participants that always hang up."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from client.participant import ProtocolClient
from server.app import Config, make_app
from server.examples.gridworld import experiment as example


@pytest.fixture
def config(request, tmp_path) -> Config:
    """The example study; `@pytest.mark.config(field=value)` changes fields for one test."""
    marker = request.node.get_closest_marker("config")
    base = Config(experiment=example, data_dir=tmp_path / "data")
    return dataclasses.replace(base, **marker.kwargs) if marker else base


@pytest.fixture
def app(config):
    return make_app(config)


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
    for client in opened:
        client.close()

