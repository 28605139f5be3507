"""Fixtures shared by the API tests: the real aiohttp app on port 0 over a real
registry and SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_api import Api, Serve, ServerThread, open_registry

from gslb.api.app import make_app
from gslb.registry import Registry
from gslb.store.sqlite import SqliteStore


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Starts the API over a registry; everything started is stopped after the test."""
    servers: list[ServerThread] = []

    def start(registry: Registry, token: str | None = None, **kwargs: Any) -> Api:
        server = ServerThread(make_app(registry, token, **kwargs))
        server.start()
        servers.append(server)
        return Api(f"http://127.0.0.1:{server.port}", registry)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def stores() -> Iterator[list[SqliteStore]]:
    opened: list[SqliteStore] = []
    yield opened
    for store in opened:
        store.close()


@pytest.fixture
def api(serve: Serve, stores: list[SqliteStore], tmp_path: Path) -> Api:
    return serve(open_registry(tmp_path / "state.sqlite", stores))
