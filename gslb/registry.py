"""The single source of truth: zones, services, registrations, health, and the generation.

Writers (the zone loader, the API, the prober, heartbeat expiry) change it through the
methods below, from any thread; each change bumps ``generation`` and publishes a new
immutable ``Snapshot``. Readers (the DNS path) take ``registry.snapshot`` without a
lock: swapping one attribute is atomic.

A zone's SOA serial increases when its configuration or registrations change, not on
health changes: answers then are short-lived and the serial would churn needlessly.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable

from gslb.errors import NotFound, RequestError
from gslb.model import (
    Endpoint,
    EndpointRef,
    Health,
    IPAddress,
    Service,
    Zone,
    fqdn,
)
from gslb.snapshot import (
    EndpointView,
    Locator,
    ServiceView,
    Snapshot,
    ZoneView,
    make_zone_view,
)
from gslb.store.contract import Registration, Store

log = logging.getLogger("gslb.registry")

RTT_CHANGE = 0.2  # relative RTT change that is worth a new snapshot
DEFAULT_HEARTBEAT_TIMEOUT = 15.0  # when an endpoint sends heartbeats without registering a timeout
Key = tuple[IPAddress, int | None]


@dataclasses.dataclass(slots=True)
class CheckNote:
    """The latest probe result of an endpoint (kept beside snapshots: it changes often)."""

    result: str
    ok: bool
    at: float
    rtt: float | None


class Registry:
    def __init__(self, store: Store | None = None, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._lock = threading.RLock()
        self._zones: dict[str, Zone] = {}
        self._serials: dict[str, int] = {}
        self._registered: dict[tuple[str, str], dict[Key, Endpoint]] = {}
        self._health: dict[EndpointRef, Health] = {}
        self._last_heartbeat: dict[EndpointRef, float] = {}
        self._checks: dict[EndpointRef, CheckNote] = {}
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._failing_open: set[str] = set()
        self._last_good: dict[str, frozenset[tuple[str, IPAddress, int | None]]] = {}
        self._locator: Locator | None = None
        self.generation = 0
        self.snapshot = Snapshot()
        if store is not None:
            state = store.load()
            self._serials.update(state.serials)
            for reg in state.registrations:
                self._registered.setdefault((reg.service, reg.pool), {})[reg.endpoint.key] = (
                    reg.endpoint
                )

    # --- configuration ------------------------------------------------------------

    def load_zones(self, zones: Iterable[Zone]) -> None:
        """Replace the configured zones. Registrations stay (and reappear with their service)."""
        with self._lock:
            new = {zone.apex: zone for zone in zones}
            changed = [apex for apex, zone in new.items() if self._zones.get(apex) != zone]
            self._zones = new
            for apex in changed:
                self._bump_serial(apex)
            orphans = {key for key in self._registered if self._find_service(key[0]) is None}
            for service, pool in sorted(orphans):
                log.warning("registrations for %s pool %s wait for that service to exist",
                            service, pool)
            for table in (self._health, self._last_heartbeat, self._checks):
                for ref in [ref for ref in table if self._endpoint(ref) is None]:
                    del table[ref]  # an endpoint that comes back starts afresh
            self._publish()

    # --- registration -------------------------------------------------------------

    def register(self, service: str, pool: str, endpoint: Endpoint) -> tuple[Endpoint, bool]:
        """Add or refresh an endpoint; returns it and whether it is new. Durable on return."""
        with self._lock:
            svc = self._require_pool(service, pool)
            endpoint = dataclasses.replace(endpoint, registered=True)
            existing = self._endpoints(svc, pool).get(endpoint.key)
            created = existing is None
            if existing != endpoint:
                if self._store is not None:
                    self._store.save_registration(Registration(svc.name, pool, endpoint))
                self._registered.setdefault((svc.name, pool), {})[endpoint.key] = endpoint
                self._bump_serial(self._zone_of(svc.name))
                self._publish()
            ref = EndpointRef(svc.name, pool, endpoint.address, endpoint.port)
            if endpoint.heartbeat_timeout is not None and created:
                self._last_heartbeat[ref] = self._clock()  # grace until the first heartbeat
            log.info("%s endpoint %s", "registered" if created else "refreshed", ref)
            return endpoint, created

    def deregister(self, service: str, pool: str, address: IPAddress, port: int | None) -> Endpoint:
        with self._lock:
            svc = self._require_pool(service, pool)
            registered = self._registered.get((svc.name, pool), {})
            endpoint = registered.get((address, port))
            if endpoint is None:
                where = address if port is None else f"{address}:{port}"
                if (address, port) in self._endpoints(svc, pool):
                    raise RequestError(
                        f"{where} is defined in a zone file; remove it there", "address"
                    )
                raise NotFound(f"no endpoint {where} in pool {pool} of {svc.name}")
            ref = EndpointRef(svc.name, pool, address, port)
            if self._store is not None:
                self._store.delete_registration(ref)
            del registered[(address, port)]
            self._health.pop(ref, None)
            self._last_heartbeat.pop(ref, None)
            self._checks.pop(ref, None)
            self._bump_serial(self._zone_of(svc.name))
            self._publish()
            log.info("deregistered endpoint %s", ref)
            return endpoint

    # --- health -------------------------------------------------------------------

    def heartbeat(
        self,
        service: str,
        pool: str | None,
        address: IPAddress,
        port: int | None,
        draining: bool,
        load: float | None,
    ) -> EndpointRef:
        """Record a heartbeat; the endpoint is up until its heartbeat timeout passes."""
        with self._lock:
            ref = self._find_ref(service, pool, address, port)
            now = self._clock()
            self._last_heartbeat[ref] = now
            old = self._health.get(ref, Health())
            new = dataclasses.replace(
                old, heartbeat_up=True, draining=draining, load=load, confirmed=True
            )
            self._set_health(ref, old, new, "heartbeat" + (" (draining)" if draining else ""))
            return ref

    def expire_heartbeats(self) -> list[EndpointRef]:
        """Mark down every endpoint whose heartbeats stopped; returns those it marked."""
        expired = []
        with self._lock:
            now = self._clock()
            for ref, last in list(self._last_heartbeat.items()):
                endpoint = self._endpoint(ref)
                if endpoint is None:
                    continue
                timeout = endpoint.heartbeat_timeout or DEFAULT_HEARTBEAT_TIMEOUT
                old = self._health.get(ref, Health())
                if now - last > timeout and old.heartbeat_up is not False:
                    new = dataclasses.replace(old, heartbeat_up=False)
                    self._set_health(ref, old, new, f"no heartbeat for {now - last:.1f}s")
                    expired.append(ref)
        return expired

    def set_probe_state(self, ref: EndpointRef, up: bool, reason: str) -> None:
        """The prober's verdict after its rise/fall thresholds: a transition, or the
        first verdict that confirms the starting state."""
        with self._lock:
            if self._endpoint(ref) is None:
                return  # deregistered while its check was in flight
            old = self._health.get(ref, Health())
            new = dataclasses.replace(old, probe_up=up, confirmed=True)
            self._set_health(ref, old, new, reason)

    def note_check(self, ref: EndpointRef, ok: bool, result: str, rtt: float | None) -> None:
        """Keep a probe's latest result for the API. The RTT reaches answers (``fastest``)
        only when it moves by a fifth or more, so steady checks publish nothing."""
        with self._lock:
            if self._endpoint(ref) is None:
                return  # deregistered while its check was in flight
            self._checks[ref] = CheckNote(result, ok, self._clock(), rtt)
            old = self._health.get(ref, Health())
            if ok and rtt is not None and (
                old.rtt is None or abs(rtt - old.rtt) >= RTT_CHANGE * old.rtt
            ):
                self._health[ref] = dataclasses.replace(old, rtt=rtt)
                self._publish()

    def set_locator(self, locator: Locator | None) -> None:
        """Use another GeoIP database for answers from now on."""
        with self._lock:
            self._locator = locator
            self._publish()

    def check_note(self, ref: EndpointRef) -> CheckNote | None:
        with self._lock:
            return self._checks.get(ref)

    def on_change(self, listener: Callable[[Snapshot], None]) -> None:
        """Call ``listener`` with every new snapshot (from the writer's thread)."""
        self._listeners.append(listener)

    # --- internals ----------------------------------------------------------------

    def _set_health(self, ref: EndpointRef, old: Health, new: Health, reason: str) -> None:
        if new.up != old.up:
            new = dataclasses.replace(new, since=self._clock())
            log.warning("endpoint %s: %s -> %s (%s)", ref, _word(old.up), _word(new.up), reason)
        if new != old:
            self._health[ref] = new
            self._publish()

    def _find_service(self, name: str) -> Service | None:
        for zone in self._zones.values():
            for service in zone.services:
                if service.name == name:
                    return service
        return None

    def _zone_of(self, service: str) -> str:
        for apex, zone in self._zones.items():
            if any(s.name == service for s in zone.services):
                return apex
        raise NotFound(f"no service {service}")

    def _service_named(self, service: str) -> Service:
        """The service of that name, as a client may spell it (any case, dot or not)."""
        svc = self._find_service(fqdn(service))
        if svc is None:
            raise NotFound(f"no service {fqdn(service).rstrip('.')}")
        return svc

    def _require_pool(self, service: str, pool: str) -> Service:
        svc = self._service_named(service)
        if svc.pool(pool) is None:
            raise NotFound(f"no pool {pool} in service {svc.name.rstrip('.')}")
        return svc

    def _endpoints(self, service: Service, pool: str) -> dict[Key, Endpoint]:
        """The pool's endpoints: the zone file's, overridden by registrations."""
        configured = service.pool(pool)
        merged = {e.key: e for e in configured.endpoints} if configured else {}
        merged.update(self._registered.get((service.name, pool), {}))
        return merged

    def _endpoint(self, ref: EndpointRef) -> Endpoint | None:
        service = self._find_service(ref.service)
        if service is None:
            return None
        return self._endpoints(service, ref.pool).get((ref.address, ref.port))

    def _find_ref(
        self, service: str, pool: str | None, address: IPAddress, port: int | None
    ) -> EndpointRef:
        svc = self._service_named(service)
        name = svc.name
        pools = [pool] if pool is not None else [p.name for p in svc.pools]
        for candidate in pools:
            if svc.pool(candidate) is None:
                raise NotFound(f"no pool {candidate} in service {name.rstrip('.')}")
            for key in self._endpoints(svc, candidate):
                if key[0] == address and (port is None or key[1] == port):
                    return EndpointRef(svc.name, candidate, key[0], key[1])
        raise NotFound(f"no endpoint {address} in {name.rstrip('.')}; register it first")

    def _bump_serial(self, apex: str) -> None:
        serial = max(self._serials.get(apex, 0) + 1, int(self._clock())) % 2**32
        self._serials[apex] = serial
        if self._store is not None:
            self._store.save_serial(apex, serial)

    def _service_view(self, service: Service) -> ServiceView:
        pools = []
        views = []
        for pool in service.pools:
            endpoints = tuple(self._endpoints(service, pool.name).values())
            full = dataclasses.replace(pool, endpoints=endpoints)
            pools.append(full)
            for endpoint in endpoints:
                ref = EndpointRef(service.name, pool.name, endpoint.address, endpoint.port)
                views.append(EndpointView(full, endpoint, self._health.get(ref, Health())))
        full_service = dataclasses.replace(service, pools=tuple(pools))
        good = frozenset(
            (v.pool.name, v.endpoint.address, v.endpoint.port)
            for v in views if v.health.serving and v.health.confirmed
        )
        if good:
            self._last_good[service.name] = good
        failing = bool(views) and not any(v.health.serving for v in views)
        if failing != (service.name in self._failing_open):  # log the change, once
            if failing:
                self._failing_open.add(service.name)
                log.error("service %s has no serving endpoint (all_down: %s)",
                          service.name, service.all_down.value)
            else:
                self._failing_open.discard(service.name)
                log.warning("service %s has serving endpoints again", service.name)
        return ServiceView(full_service, tuple(views), self._last_good.get(service.name, frozenset()))

    def _publish(self) -> None:
        zones: dict[str, ZoneView] = {}
        for apex, zone in self._zones.items():
            services = {s.name: self._service_view(s) for s in zone.services}
            zones[apex] = make_zone_view(zone, self._serials.get(apex, 1), services)
        self.generation += 1
        snapshot = Snapshot(self.generation, zones, self._locator)
        self.snapshot = snapshot
        for listener in self._listeners:
            listener(snapshot)


def _word(up: bool) -> str:
    return "up" if up else "down"
