"""Wires the parts of a running GSLB together: store, registry, health, DNS and API.

Used by ``gslb serve`` and by the tests, which start the very same thing on port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gslb.api.app import make_app
from gslb.config import ReloadReport, load_zones
from gslb.dns.querylog import QueryLog
from gslb.dns.rrl import DEFAULT_SLIP, ResponseRateLimiter
from gslb.dns.server import DnsServer
from gslb.errors import ConfigError, StoreError
from gslb.geoip import GeoSource
from gslb.health.thread import HealthThread
from gslb.metrics import Metrics
from gslb.registry import Registry
from gslb.store.contract import Store, StoreStatus
from gslb.store.redis import RedisStore
from gslb.store.sqlite import SqliteStore
from gslb.store.sync import RedisSync
from gslb.workers.pool import WorkerPool, WorkerSettings

log = logging.getLogger("gslb")

BUNDLED_GEOIP = Path("data/gslb-geo.mmdb")
GEOIP_WATCH_PERIOD = 5.0  # seconds between looks at the GeoIP file for a new version


@dataclass(frozen=True, slots=True)
class Settings:
    zones: Path = Path("zones")
    dns: tuple[str, int] = ("127.0.0.1", 5353)
    api: tuple[str, int] = ("127.0.0.1", 8053)
    state: str = "data/state.sqlite"
    token: str | None = None
    read_token: str | None = None  # set: reads need it (or a write/admin token)
    admin_token: str | None = None  # set: service management needs it instead of ``token``
    geoip: Path | None = BUNDLED_GEOIP  # None: no GeoIP; geo rules then never match
    health_quorum: int = 0  # instances that must see an endpoint down; 0: a majority
    rrl_rate: float = 0.0  # UDP responses per second per client network; 0: no limiting
    rrl_slip: int = DEFAULT_SLIP
    query_log: int = 0  # log one DNS query in this many; 0: none
    workers: int = 0  # DNS worker processes; 0: DNS runs in this process
    log_level: str = "info"  # for the workers' own log lines
    log_format: str = "text"
    udp_batch: bool = True  # UDP in recvmmsg/sendmmsg batches where the system has them


def open_store(state: str) -> Store:
    """The store named by ``--state``: ``redis://host:port/db`` (shared by several
    instances), else a SQLite file path."""
    if state.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(state)
    if "://" in state:
        raise StoreError(f"unsupported state store {state!r}: give a SQLite file path "
                         "or redis://host:port/db")
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
        self._workers: WorkerPool | None = None
        self._runner: web.AppRunner | None = None
        self._geo: GeoSource | None = None
        self._watch: asyncio.Task[None] | None = None
        self._sync: RedisSync | None = None
        self._sync_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        zones = load_zones(self.settings.zones)
        if self.settings.geoip is not None:
            self._geo = GeoSource.open(self.settings.geoip)
            log.info("geoip: %s", self._geo.database)
        self._store = open_store(self.settings.state)
        registry = Registry(self._store)
        registry.health_quorum = self.settings.health_quorum
        registry.load_zones(zones)
        if isinstance(self._store, RedisStore):
            self._sync = RedisSync(self._store, registry)
            self._sync_task = asyncio.create_task(self._sync.run(), name="redis sync")
            log.info("shared state: %s (instance %s)", self._store.where, self._store.instance)
        if self._geo is not None:
            registry.set_locator(self._geo.database)
            self._watch = asyncio.create_task(self._watch_geoip())
        self.registry = registry

        self.metrics = Metrics(lambda: registry.snapshot, registry.transition_counts)
        self._health = HealthThread(registry, on_check=self.metrics.observe_check)
        self._health.start()

        host, port = self.settings.dns
        if self.settings.workers > 0:
            await self._start_workers(registry, host, port)
        else:
            rrl = None
            if self.settings.rrl_rate > 0:
                rrl = ResponseRateLimiter(self.settings.rrl_rate, self.settings.rrl_slip)
            query_log = QueryLog(self.settings.query_log) if self.settings.query_log else None
            self._dns = DnsServer(
                lambda: registry.snapshot, rrl=rrl, query_log=query_log,
                udp_batch=self.settings.udp_batch,
            )
            self.metrics.dns = self._dns.stats
            self.dns_port = await self._dns.start(host, port)
            log.info("dns listening on %s (udp, tcp)", _join(host, self.dns_port))
        if self.settings.rrl_rate > 0:
            log.info("rate limiting: %g responses/s per client network, slip %d",
                     self.settings.rrl_rate, self.settings.rrl_slip)
        if self.settings.query_log > 0:
            log.info("query log: one query in %d, on logger gslb.query", self.settings.query_log)

        app = make_app(
            registry,
            self.settings.token,
            read_token=self.settings.read_token,
            admin_token=self.settings.admin_token,
            reload=self.reload,
            store_status=self.store_status,
            metrics=self.metrics,
            workers=None if self._workers is None else self._workers.status,
            settle=None if self._workers is None else self._workers.settled,
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = self.settings.api
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.api_port = _bound_port(self._runner, port)
        log.info("api listening on http://%s", _join(host, self.api_port))
        log.info(
            "serving %d zone(s): %s", len(zones), ", ".join(z.apex for z in zones)
        )

    async def _start_workers(self, registry: Registry, host: str, port: int) -> None:
        """DNS in worker processes fed by this one, which keeps health, API and store."""
        settings = self.settings
        pool = WorkerPool(WorkerSettings(
            settings.workers, settings.geoip, settings.rrl_rate, settings.rrl_slip,
            settings.log_level, settings.log_format, settings.query_log,
            udp_batch=settings.udp_batch,
        ), lambda: registry.snapshot)
        self._workers = pool
        registry.on_change(pool.notify)
        self.dns_port = await pool.start(host, port)
        self.metrics.dns_counts = pool.collect
        log.info("dns listening on %s (udp, tcp) in %d worker processes",
                 _join(host, self.dns_port), settings.workers)

    def reload(self) -> ReloadReport:
        """Re-read the zone files and the GeoIP database (on SIGHUP and ``POST /reload``);
        what fails to load changes nothing, and the report lists every problem."""
        assert self.registry is not None
        self.reload_geoip()  # reports its own failure; the old database keeps serving
        try:
            zones = load_zones(self.settings.zones)
        except ConfigError as exc:
            log.error("reload refused, zones unchanged:\n%s", exc)
            return ReloadReport(problems=tuple(exc.problems))
        self.registry.load_zones(zones)
        log.info("reloaded %d zone(s)", len(zones))
        return ReloadReport(zones=tuple(zone.apex for zone in zones))

    def reload_geoip(self) -> bool:
        if self._geo is None or self.registry is None:
            return True
        if not self._geo.reload():
            return False  # GeoSource said why; the old database keeps serving
        self.registry.set_locator(self._geo.database)
        log.info("geoip reloaded: %s", self._geo.database)
        return True

    async def _watch_geoip(self) -> None:
        assert self._geo is not None
        while True:
            await asyncio.sleep(GEOIP_WATCH_PERIOD)
            if self._geo.changed():
                await asyncio.to_thread(self.reload_geoip)

    def store_status(self) -> StoreStatus:
        if self._sync is not None:
            return self._sync.status()
        return StoreStatus("sqlite")

    async def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._runner is not None:
            await self._runner.cleanup()
        if self._dns is not None:
            await self._dns.close()
        if self._workers is not None:
            await self._workers.stop()
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
