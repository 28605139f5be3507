"""Wires the parts of a running GSLB together: store, registry, health, DNS and API.

Used by ``gslb serve`` and by the tests, which start the very same thing on port 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gslb.api.app import make_app
from gslb.config import load_zones
from gslb.dns.server import DnsServer
from gslb.errors import ConfigError, StoreError
from gslb.health.thread import HealthThread
from gslb.registry import Registry
from gslb.store.contract import Store
from gslb.store.sqlite import SqliteStore

log = logging.getLogger("gslb")


@dataclass(frozen=True, slots=True)
class Settings:
    zones: Path = Path("zones")
    dns: tuple[str, int] = ("127.0.0.1", 5353)
    api: tuple[str, int] = ("127.0.0.1", 8053)
    state: str = "data/state.sqlite"
    token: str | None = None


def open_store(state: str) -> Store:
    """The store named by ``--state``: a SQLite file path."""
    if "://" in state:
        raise StoreError(f"unsupported state store {state!r}: give a SQLite file path")
    return SqliteStore(Path(state))


class Gslb:
    """One running instance. ``start()`` raises ConfigError or StoreError before serving."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry: Registry | None = None
        self.dns_port = 0
        self.api_port = 0
        self._store: Store | None = None
        self._health: HealthThread | None = None
        self._dns: DnsServer | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        zones = load_zones(self.settings.zones)
        self._store = open_store(self.settings.state)
        registry = Registry(self._store)
        registry.load_zones(zones)
        self.registry = registry

        self._health = HealthThread(registry)
        self._health.start()

        self._dns = DnsServer(lambda: registry.snapshot)
        host, port = self.settings.dns
        self.dns_port = await self._dns.start(host, port)
        log.info("dns listening on %s (udp, tcp)", _join(host, self.dns_port))

        self._runner = web.AppRunner(make_app(registry, self.settings.token), access_log=None)
        await self._runner.setup()
        host, port = self.settings.api
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.api_port = _bound_port(self._runner, port)
        log.info("api listening on http://%s", _join(host, self.api_port))
        log.info(
            "serving %d zone(s): %s", len(zones), ", ".join(z.apex for z in zones)
        )

    def reload(self) -> bool:
        """Re-read the zone files; a bad file changes nothing. Returns whether it applied."""
        assert self.registry is not None
        try:
            zones = load_zones(self.settings.zones)
        except ConfigError as exc:
            log.error("reload refused, zones unchanged:\n%s", exc)
            return False
        self.registry.load_zones(zones)
        log.info("reloaded %d zone(s)", len(zones))
        return True

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._dns is not None:
            await self._dns.close()
        if self._health is not None:
            self._health.stop()
        if self._store is not None:
            self._store.close()


def _bound_port(runner: web.AppRunner, asked: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    return asked


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
