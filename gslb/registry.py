"""The single source of truth: zones, services, registrations, health, and the generation.

Writers (the zone loader, the API, the prober, heartbeat expiry) change it through the
methods below, from any thread; each change bumps ``generation`` and publishes a new
immutable ``Snapshot``. Readers (the DNS path) take ``registry.snapshot`` without a
lock: swapping one attribute is atomic.

A zone's SOA serial increases when its configuration, registrations, API-made services
or admin states change, not on health changes: answers then are short-lived and the
serial would churn needlessly.

Services come from zone files and from ``PUT /services/{name}``. A zone file's service
wins over an API service of the same name (the API refuses to create one, but a zone file
may gain it later); an API service whose zone is not served waits, logged, until it is.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gslb.config import in_zone, parse_service
from gslb.errors import ConfigError, Conflict, Forbidden, NotFound, RequestError
from gslb.model import (
    AdminState,
    CheckKind,
    Endpoint,
    EndpointRef,
    Health,
    IPAddress,
    RType,
    Service,
    Transition,
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
HISTORY = 20  # transitions kept per endpoint
Key = tuple[IPAddress, int | None]
API_SOURCE = "api"  # the source of services made by PUT /services/{name}


@dataclasses.dataclass(slots=True)
class CheckNote:
    """The latest probe result of an endpoint (kept beside snapshots: it changes often)."""

    result: str
    ok: bool
    at: float
    rtt: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointNotes:
    """What the API shows of an endpoint beside its snapshot health."""

    check: CheckNote | None = None
    history: tuple[Transition, ...] = ()  # oldest first
    lease_until: float | None = None  # clock time its lease ends unless a heartbeat renews it
    last_heartbeat: float | None = None


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
        self._api_services: dict[str, tuple[Service, Mapping[str, Any]]] = {}
        self._services: dict[str, tuple[str, Service]] = {}  # name -> (apex, service) served
        self._admin: dict[EndpointRef, AdminState] = {}
        self._history: dict[EndpointRef, deque[Transition]] = {}
        self._lease_until: dict[EndpointRef, float] = {}
        self.generation = 0
        self.snapshot = Snapshot()
        if store is not None:
            state = store.load()
            self._serials.update(state.serials)
            now = clock()
            for reg in state.registrations:
                self._registered.setdefault((reg.service, reg.pool), {})[reg.endpoint.key] = (
                    reg.endpoint
                )
                if reg.endpoint.lease is not None:  # a restart grants a whole lease again
                    ref = EndpointRef(reg.service, reg.pool, reg.endpoint.address, reg.endpoint.port)
                    self._lease_until[ref] = now + reg.endpoint.lease
            for name, spec in state.services.items():
                try:
                    self._api_services[name] = (parse_service(name, spec), spec)
                except ConfigError as exc:  # written by an older version, say: keep serving
                    log.error("stored service %s is invalid and ignored: %s", name, exc)
            self._admin.update(state.admin)

    # --- configuration ------------------------------------------------------------

    def load_zones(self, zones: Iterable[Zone]) -> None:
        """Replace the configured zones. Registrations stay (and reappear with their service)."""
        with self._lock:
            new = {zone.apex: zone for zone in zones}
            changed = [apex for apex, zone in new.items() if self._zones.get(apex) != zone]
            self._zones = new
            self._reindex()
            for apex in changed:
                self._bump_serial(apex)
            orphans = {key for key in self._registered if self._find_service(key[0]) is None}
            for service, pool in sorted(orphans):
                log.warning("registrations for %s pool %s wait for that service to exist",
                            service, pool)
            self._forget_missing()
            self._publish()

    def put_service(self, name: str, spec: Mapping[str, Any]) -> tuple[Service, bool]:
        """Create or replace a service from its definition (a zone file service's shape);
        returns it and whether it is new. Durable on return."""
        with self._lock:
            full = fqdn(name)
            service = parse_service(full, spec)
            apex = self._apex_for(full)
            if apex is None:
                served = ", ".join(sorted(a.rstrip(".") for a in self._zones)) or "none"
                raise RequestError(
                    f"name: {full.rstrip('.')} is not inside a served zone (served: {served})",
                    "name",
                )
            zone = self._zones[apex]
            if any(s.name == full for s in zone.services):
                raise Conflict(f"service {full.rstrip('.')} is defined in zone file "
                               f"{zone.source or apex}; change it there")
            if any(r.name == full and r.rtype in (RType.A, RType.AAAA, RType.CNAME)
                   for r in zone.records):
                raise Conflict(f"{full.rstrip('.')} has static A/AAAA/CNAME records in zone file "
                               f"{zone.source or apex}")
            created = full not in self._api_services
            if self._store is not None:
                self._store.save_service(full, spec)
            self._api_services[full] = (service, spec)
            self._reindex()
            self._bump_serial(apex)
            self._forget_missing()
            self._publish()
            log.info("%s service %s", "created" if created else "replaced", full)
            return service, created

    def delete_service(self, name: str) -> Service:
        """Remove a service made through the API, with its registrations and admin states."""
        with self._lock:
            full = fqdn(name)
            if full not in self._api_services:
                found = self._services.get(full)
                if found is not None:
                    zone = self._zones[found[0]]
                    raise Conflict(f"service {full.rstrip('.')} is defined in zone file "
                                   f"{zone.source or found[0]}; remove it there")
                raise NotFound(f"no service {full.rstrip('.')}")
            if self._store is not None:
                self._store.delete_service(full)
            apex = self._services.get(full, (None, None))[0]
            service, _ = self._api_services.pop(full)
            for key in [key for key in self._registered if key[0] == full]:
                del self._registered[key]
            for table in (self._admin, self._lease_until, self._history):
                for ref in [ref for ref in table if ref.service == full]:
                    del table[ref]
            self._reindex()
            if apex is not None:
                self._bump_serial(apex)
            self._forget_missing()
            self._publish()
            log.info("deleted service %s", full)
            return service

    def source_of(self, name: str) -> str:
        """``api`` for a service made through the API, else its zone file ("" if unknown)."""
        found = self.service_spec(name)
        return "" if found is None else found[0]

    def service_spec(self, name: str) -> tuple[str, Mapping[str, Any] | None] | None:
        """Where a served service comes from (a zone file, or ``api``) and, for an API
        service, its definition as PUT; None when it is not served."""
        with self._lock:
            found = self._services.get(fqdn(name))
            if found is None:
                return None
            api = self._api_services.get(found[1].name)
            if api is not None and api[0] is found[1]:
                return API_SOURCE, api[1]
            return self._zones[found[0]].source or found[0], None

    # --- registration -------------------------------------------------------------

    def register(
        self, service: str, pool: str, endpoint: Endpoint, *, enforce_allow: bool = False
    ) -> tuple[Endpoint, bool]:
        """Add or refresh an endpoint; returns it and whether it is new. Durable on return.

        With ``enforce_allow`` (the API's writes) the address must be inside one of the
        pool's ``allow`` networks, else Forbidden: registering clients must not be able to
        point the prober at arbitrary hosts.
        """
        with self._lock:
            svc = self._require_pool(service, pool)
            allowed = svc.pool(pool)
            if enforce_allow and (allowed is None or not allowed.allows(endpoint.address)):
                networks = ", ".join(str(n) for n in allowed.allow) if allowed else ""
                raise Forbidden(
                    f"{endpoint.address} is outside the networks pool {pool} accepts "
                    f"registrations from ({networks or 'none: the pool has no allow list'})"
                )
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
            if endpoint.lease is not None:
                self._lease_until[ref] = self._clock() + endpoint.lease
            else:
                self._lease_until.pop(ref, None)
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
            self._remove(ref, "deregistered")
            return endpoint

    def expire_leases(self) -> list[EndpointRef]:
        """Remove the registrations whose lease ran out without a heartbeat."""
        expired = []
        with self._lock:
            now = self._clock()
            for ref, until in list(self._lease_until.items()):
                if until > now:
                    continue
                if (ref.address, ref.port) not in self._registered.get((ref.service, ref.pool), {}):
                    del self._lease_until[ref]
                    continue
                self._remove(ref, "lease expired, removed")
                expired.append(ref)
        return expired

    def set_admin(
        self, service: str, pool: str, address: IPAddress, port: int | None, state: AdminState
    ) -> tuple[EndpointRef, Endpoint]:
        """An operator's override for one endpoint (of a zone file or registered). Durable."""
        with self._lock:
            svc = self._require_pool(service, pool)
            ref = self._find_ref(svc.name, pool, address, port, exact=True)
            endpoint = self._endpoint(ref)
            assert endpoint is not None
            old = self._current(ref)
            if old.admin is not state:
                if self._store is not None:
                    self._store.save_admin(ref, state)
                if state is AdminState.ENABLED:
                    self._admin.pop(ref, None)
                else:
                    self._admin[ref] = state
                self._bump_serial(self._zone_of(svc.name))
                self._note_change(ref, old, dataclasses.replace(old, admin=state),
                                  f"admin state {state.value}")
                self._publish()
            return ref, endpoint

    def find_endpoint(
        self, service: str, pool: str, address: IPAddress, port: int | None
    ) -> EndpointRef:
        """The endpoint of that pool at ``address`` (and ``port``); NotFound otherwise."""
        with self._lock:
            svc = self._require_pool(service, pool)
            return self._find_ref(svc.name, pool, address, port, exact=True)

    def notes(self, ref: EndpointRef) -> EndpointNotes:
        with self._lock:
            return EndpointNotes(
                self._checks.get(ref),
                tuple(self._history.get(ref, ())),
                self._lease_until.get(ref),
                self._last_heartbeat.get(ref),
            )

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
            endpoint = self._endpoint(ref)
            if endpoint is not None and endpoint.lease is not None:
                self._lease_until[ref] = now + endpoint.lease
            old = self._current(ref)
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
            for apex_service in self._services.values():  # push-only: grace from now on
                service = apex_service[1]
                for pool in service.pools:
                    for member in self._endpoints(service, pool.name).values():
                        if service.check_of(member).kind is CheckKind.HEARTBEAT:
                            ref = EndpointRef(service.name, pool.name, member.address,
                                              member.port)
                            self._last_heartbeat.setdefault(ref, now)
            for ref, last in list(self._last_heartbeat.items()):
                endpoint = self._endpoint(ref)
                if endpoint is None:
                    continue
                timeout = endpoint.heartbeat_timeout or DEFAULT_HEARTBEAT_TIMEOUT
                old = self._current(ref)
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
            old = self._current(ref)
            new = dataclasses.replace(old, probe_up=up, confirmed=True)
            self._set_health(ref, old, new, reason)

    def note_check(self, ref: EndpointRef, ok: bool, result: str, rtt: float | None) -> None:
        """Keep a probe's latest result for the API. The RTT reaches answers (``fastest``)
        only when it moves by a fifth or more, so steady checks publish nothing."""
        with self._lock:
            if self._endpoint(ref) is None:
                return  # deregistered while its check was in flight
            self._checks[ref] = CheckNote(result, ok, self._clock(), rtt)
            old = self._current(ref)
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

    def _current(self, ref: EndpointRef) -> Health:
        """The endpoint's health with its admin state applied."""
        health = self._health.get(ref, Health())
        admin = self._admin.get(ref, AdminState.ENABLED)
        return health if health.admin is admin else dataclasses.replace(health, admin=admin)

    def _set_health(self, ref: EndpointRef, old: Health, new: Health, reason: str) -> None:
        if new.up != old.up:
            new = dataclasses.replace(new, since=self._clock())
        self._note_change(ref, old, new, reason)
        if new != old:
            self._health[ref] = new
            self._publish()

    def _note_change(self, ref: EndpointRef, old: Health, new: Health, reason: str) -> None:
        """Log a change of the endpoint's state once, and keep it in its history."""
        if new.state == old.state:
            return
        self._history.setdefault(ref, deque(maxlen=HISTORY)).append(
            Transition(self._clock(), old.state, new.state, reason)
        )
        log.warning("endpoint %s: %s -> %s (%s)", ref, old.state, new.state, reason)

    def _remove(self, ref: EndpointRef, why: str) -> None:
        """Drop a registration, durably, and everything known of it."""
        if self._store is not None:
            self._store.delete_registration(ref)
        del self._registered[(ref.service, ref.pool)][(ref.address, ref.port)]
        for table in (self._health, self._last_heartbeat, self._checks, self._lease_until,
                      self._history):
            table.pop(ref, None)
        if self._endpoint(ref) is None and ref in self._admin:  # no zone file endpoint stays
            if self._store is not None:
                self._store.save_admin(ref, AdminState.ENABLED)
            del self._admin[ref]
        self._bump_serial(self._zone_of(ref.service))
        self._publish()
        log.info("%s endpoint %s", why, ref)

    def _forget_missing(self) -> None:
        for table in (self._health, self._last_heartbeat, self._checks, self._history):
            for ref in [ref for ref in table if self._endpoint(ref) is None]:
                del table[ref]  # an endpoint that comes back starts afresh

    def _apex_for(self, name: str) -> str | None:
        """The served zone holding ``name``, by longest suffix."""
        best = None
        for apex in self._zones:
            if in_zone(name, apex) and (best is None or len(apex) > len(best)):
                best = apex
        return best

    def _reindex(self) -> None:
        """Which services are served, and in which zone."""
        services: dict[str, tuple[str, Service]] = {}
        for apex, zone in self._zones.items():
            for service in zone.services:
                services[service.name] = (apex, service)
        for name, (api_service, _) in sorted(self._api_services.items()):
            holder = self._apex_for(name)
            if holder is None:
                log.warning("service %s (from the API) waits: no served zone holds it", name)
            elif name in services:
                log.warning("service %s (from the API) is shadowed by zone file %s", name,
                            self._zones[holder].source or holder)
            else:
                services[name] = (holder, api_service)
        self._services = services

    def _find_service(self, name: str) -> Service | None:
        found = self._services.get(name)
        return None if found is None else found[1]

    def _zone_of(self, service: str) -> str:
        found = self._services.get(service)
        if found is None:
            raise NotFound(f"no service {service}")
        return found[0]

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
        self,
        service: str,
        pool: str | None,
        address: IPAddress,
        port: int | None,
        exact: bool = False,
    ) -> EndpointRef:
        """The endpoint at ``address`` (and ``port``, when given). With ``exact``, an
        address that several endpoints share needs its port."""
        svc = self._service_named(service)
        name = svc.name
        pools = [pool] if pool is not None else [p.name for p in svc.pools]
        found = []
        for candidate in pools:
            if svc.pool(candidate) is None:
                raise NotFound(f"no pool {candidate} in service {name.rstrip('.')}")
            for key in self._endpoints(svc, candidate):
                if key[0] == address and (port is None or key[1] == port):
                    found.append(EndpointRef(svc.name, candidate, key[0], key[1]))
        if exact and len(found) > 1:
            ports = ", ".join(str(ref.port) for ref in found)
            raise RequestError(f"port: {address} has endpoints on ports {ports}; name one",
                               "port")
        if found:
            return found[0]
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
                views.append(EndpointView(full, endpoint, self._current(ref)))
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
        by_zone: dict[str, dict[str, ServiceView]] = {apex: {} for apex in self._zones}
        for apex, service in self._services.values():
            by_zone[apex][service.name] = self._service_view(service)
        zones: dict[str, ZoneView] = {}
        for apex, zone in self._zones.items():
            zones[apex] = make_zone_view(zone, self._serials.get(apex, 1), by_zone[apex])
        self.generation += 1
        snapshot = Snapshot(self.generation, zones, self._locator)
        self.snapshot = snapshot
        for listener in self._listeners:
            listener(snapshot)

