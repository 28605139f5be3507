"""The single source of truth: zones, services, registrations, health, and the generation.

Writers (the zone loader, the API, the prober, heartbeat expiry) change it through the
methods below, from any thread; each change bumps ``generation`` and publishes a new
immutable ``Snapshot``. Readers (the DNS path) take ``registry.snapshot`` without a
lock: swapping one attribute is atomic.

A change rebuilds only the views it touched: every method that changes what a service's
view is made of (its definition, registrations, health, admin states) marks the service
with ``_touch``, and ``_publish`` rebuilds the marked services' views and their zones'
views, sharing everything else with the previous snapshot. An untouched service keeps
its very ``ServiceView`` object, and so the answer engine's working values in its
``memo``. Global changes (another GeoIP database) rebuild everything.

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
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from gslb.config import in_zone, parse_service
from gslb.errors import ConfigError, Conflict, Forbidden, NotFound, NotShared, RequestError, StoreError
from gslb.health.quorum import Report, decide
from gslb.model import (
    AdminState,
    CheckKind,
    Endpoint,
    EndpointRef,
    Health,
    IPAddress,
    Policy,
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
from gslb.store.contract import Heartbeat, Registration, Store, StoredState

log = logging.getLogger("gslb.registry")

RTT_CHANGE = 0.2  # relative RTT change that is worth a new snapshot ...
RTT_FLOOR = 0.001  # ... when it is also this many seconds (sub-millisecond jitter is not)
LAZY_PUBLISH = 1.0  # seconds: a probe result that answers barely depend on waits this long
DEFAULT_HEARTBEAT_TIMEOUT = 15.0  # when an endpoint sends heartbeats without registering a timeout
HISTORY = 20  # transitions kept per endpoint
Key = tuple[IPAddress, int | None]
API_SOURCE = "api"  # the source of services made by PUT /services/{name}
FRESH = Health()  # of every endpoint nothing is known of yet: one shared value, not 10,000


class CheckNote(NamedTuple):
    """The latest probe result of an endpoint (kept beside snapshots: it changes often).

    The registry keeps them as plain tuples (made into a ``CheckNote`` when asked):
    thousands are replaced every second, and the garbage collector stops tracking plain
    tuples of plain values, so that they do not make it walk the whole heap over and
    over (it never stops tracking instances of a class)."""

    result: str
    ok: bool
    at: float
    rtt: float | None


class CheckReport(NamedTuple):
    """One probe result for ``note_checks``, with the prober's verdict when it has one.

    A tuple: the prober reports thousands a second, as plain tuples of these fields (a
    plain tuple costs 0.05 µs to make, this class 0.4, a frozen dataclass 1.3)."""

    ref: EndpointRef
    ok: bool
    result: str
    rtt: float | None
    verdict: bool | None = None  # up or down after rise/fall, when it changed or was the first
    reason: str = ""  # why, for the log and the history


# A CheckReport's fields, as the prober hands them over
CheckFields = tuple[EndpointRef, bool, str, float | None, bool | None, str]


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
        self._heartbeats_walked = -1  # the generation expire_heartbeats last looked at
        self._checks: dict[EndpointRef, tuple[str, bool, float, float | None]] = {}  # CheckNotes
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._failing_open: set[str] = set()
        self._last_good: dict[str, frozenset[tuple[str, IPAddress, int | None]]] = {}
        self._locator: Locator | None = None
        self._api_services: dict[str, tuple[Service, Mapping[str, Any]]] = {}
        self._services: dict[str, tuple[str, Service]] = {}  # name -> (apex, service) served
        self._configured: dict[tuple[str, str], frozenset[Key]] = {}  # zone-file endpoints
        self._lazy_published = -math.inf  # clock time of the last publish for note_checks
        self._lazy_waiting = False  # note_checks kept changes that no snapshot shows yet
        self._admin: dict[EndpointRef, AdminState] = {}
        self._history: dict[EndpointRef, deque[Transition]] = {}
        self._transitions: Counter[str] = Counter()  # new state -> changes, for metrics
        self._lease_until: dict[EndpointRef, float] = {}
        # several instances on one shared store (see apply_stored):
        self._local_probe: dict[EndpointRef, bool] = {}  # this instance's prober's verdicts
        self._reports: dict[EndpointRef, dict[str, Report]] = {}  # the other instances'
        self._beats: dict[EndpointRef, float] = {}  # time of the last heartbeat applied
        self._verdict_listeners: list[Callable[[], None]] = []
        self.health_quorum = 0  # down votes that take an endpoint down; 0: a majority
        # what the next _publish must rebuild (see the module docstring):
        self._views: dict[str, ServiceView] = {}  # the published view of each served service
        self._dirty: set[str] = set()  # services whose views are out of date
        self._restructured: set[str] = set()  # zones that gained or lost services
        self._rebuild_all = True
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
            new = {zone.apex: _reuse(self._zones.get(zone.apex), zone) for zone in zones}
            changed = [apex for apex, zone in new.items() if self._zones.get(apex) is not zone]
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
            self._touch(full)  # a zone file's service of that name loses them too
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
                self._touch(svc.name)
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
        """Remove a registration, durably. One waiting for its service or pool (a PUT
        dropped the pool, a zone file the service) is removed too, so it does not come
        back with them."""
        with self._lock:
            svc = self._find_service(fqdn(service))
            name = fqdn(service) if svc is None else svc.name
            if svc is None or svc.pool(pool) is None:
                waiting = self._registered.get((name, pool), {})
                if not any(key[0] == address for key in waiting):
                    self._require_pool(service, pool)  # NotFound: no service, or no pool
                refs = [EndpointRef(name, pool, *key) for key in waiting]
                ref = _only(refs, address, port, name)
            else:
                ref = self._find_ref(name, pool, address, port)
            endpoint = self._registered.get((ref.service, ref.pool), {}).get(
                (ref.address, ref.port))
            if endpoint is None:
                where = address if ref.port is None else f"{address}:{ref.port}"
                raise RequestError(f"{where} is defined in a zone file; remove it there",
                                   "address")
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
            ref = self._find_ref(svc.name, pool, address, port)
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
                self._touch(ref.service)
                self._bump_serial(self._zone_of(svc.name))
                new = dataclasses.replace(old, admin=state)
                if new.state != old.state:
                    self._health[ref] = dataclasses.replace(
                        self._health.get(ref, Health()), since=self._clock())
                self._note_change(ref, old, new, f"admin state {state.value}")
                self._publish()
            return ref, endpoint

    def find_endpoint(
        self, service: str, pool: str, address: IPAddress, port: int | None
    ) -> EndpointRef:
        """The endpoint of that pool at ``address`` (and ``port``); NotFound otherwise."""
        with self._lock:
            svc = self._require_pool(service, pool)
            return self._find_ref(svc.name, pool, address, port)

    def notes(self, ref: EndpointRef) -> EndpointNotes:
        with self._lock:
            return EndpointNotes(
                _note(self._checks.get(ref)),
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
            self._beats[ref] = now
        if self._store is not None:
            # outside the lock: a store that hangs must not stall the prober's reports.
            # The heartbeat stays applied here: this instance keeps the endpoint alive
            # through a store outage, and the sender learns the others did not see it.
            try:
                self._store.save_heartbeat(ref, Heartbeat(now, draining, load))
            except StoreError as exc:
                raise NotShared(f"the heartbeat counts on this instance only; the shared "
                                f"store failed: {exc}") from exc
        return ref

    def expire_heartbeats(self) -> list[EndpointRef]:
        """Mark down every endpoint whose heartbeats stopped; returns those it marked."""
        expired = []
        with self._lock:
            now = self._clock()
            # Push-only endpoints get their grace from the first look after they appear.
            # Every endpoint that appears comes with a new snapshot: a look at all of
            # them (10 ms at 10,000 endpoints) is only needed after one.
            generation = self.snapshot.generation
            if generation != self._heartbeats_walked:
                self._heartbeats_walked = generation
                for apex_service in self._services.values():
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
            if not self._known(ref):
                return  # deregistered while its check was in flight
            self._local_probe[ref] = up
            if self._decide_probe(ref, reason):
                self._publish()
        for listener in self._verdict_listeners:
            listener()

    def note_check(self, ref: EndpointRef, ok: bool, result: str, rtt: float | None) -> None:
        """Keep a probe's latest result for the API (see ``note_checks``)."""
        self.note_checks([CheckReport(ref, ok, result, rtt)])

    def note_checks(self, reports: Iterable[CheckFields]) -> None:
        """Keep a batch of probe results (``CheckReport``s, or plain tuples of their
        fields), and the verdicts among them, under one lock and in at most one new
        snapshot.

        A verdict that changes whether an endpoint is answered is published at once, and
        so is an RTT that moved for a ``fastest`` service (which orders by it; see
        ``_keep_rtt``). What answers barely depend on waits for a snapshot made within
        about a second (``LAZY_PUBLISH``): the first verdict that only confirms an
        endpoint's state, and its first RTT. Steady checks publish nothing.
        """
        verdicts = False
        with self._lock:
            now = self._clock()
            urgent = lazy = False
            checks, health, services = self._checks, self._health, self._services
            for ref, ok, result, rtt, verdict, reason in reports:
                # A steady check costs one write here: an endpoint with a check note is
                # known (its notes go when it goes), so only a first note asks _known.
                count = len(checks)
                checks[ref] = (result, ok, now, rtt)
                if len(checks) != count and not self._known(ref):
                    del checks[ref]
                    continue  # deregistered while its check was in flight
                if ok and rtt is not None:
                    kept = health.get(ref)
                    found = services.get(ref.service)
                    if (kept is None or kept.rtt is None
                            or (found is not None and found[1].policy is Policy.FASTEST)):
                        changed = self._keep_rtt(ref, rtt)
                        urgent = urgent or changed is True
                        lazy = lazy or changed is None
                if verdict is not None:
                    verdicts = True
                    self._local_probe[ref] = verdict
                    before = self._current(ref)
                    if self._decide_probe(ref, reason):
                        urgent = urgent or self._current(ref).up != before.up
                        lazy = True
            if lazy and not urgent and now - self._lazy_published < LAZY_PUBLISH:
                self._lazy_waiting = True
            elif urgent or lazy or (self._lazy_waiting and now - self._lazy_published >= LAZY_PUBLISH):
                self._lazy_published = now
                self._lazy_waiting = False
                self._publish()
        if verdicts:
            for listener in self._verdict_listeners:
                listener()

    def _keep_rtt(self, ref: EndpointRef, rtt: float) -> bool | None:
        """Keep the RTT that answers use; returns whether a snapshot must show it now
        (True), soon (None) or not at all (False).

        A ``fastest`` service orders by it: a move by a fifth and a millisecond or more
        is kept and shown at once. Other services keep the first RTT only (so that the
        API shows one); the latest is in the check note, and churning the health of
        thousands of endpoints with round-trip jitter would buy nothing.
        """
        old = self._current(ref)
        if old.rtt is None:
            self._health[ref] = dataclasses.replace(old, rtt=rtt)
            self._touch(ref.service)
            return True if self._fastest(ref) else None
        if abs(rtt - old.rtt) < max(RTT_CHANGE * old.rtt, RTT_FLOOR) or not self._fastest(ref):
            return False
        self._health[ref] = dataclasses.replace(old, rtt=rtt)
        self._touch(ref.service)
        return True

    def _fastest(self, ref: EndpointRef) -> bool:
        found = self._services.get(ref.service)
        return found is not None and found[1].policy is Policy.FASTEST

    def set_locator(self, locator: Locator | None) -> None:
        """Use another GeoIP database for answers from now on."""
        with self._lock:
            self._locator = locator
            self._rebuild_all = True  # answers are computed anew: start every view afresh
            self._publish()

    def transition_counts(self) -> dict[str, int]:
        """How many times endpoints changed into each state since start."""
        with self._lock:
            return dict(self._transitions)

    def check_note(self, ref: EndpointRef) -> CheckNote | None:
        with self._lock:
            return _note(self._checks.get(ref))

    def on_change(self, listener: Callable[[Snapshot], None]) -> Callable[[], None]:
        """Call ``listener`` with every new snapshot (from the writer's thread); returns
        what stops that."""
        # Copied, not changed in place: a writer in another thread may be going through
        # the list.
        self._listeners = [*self._listeners, listener]

        def stop() -> None:
            self._listeners = [known for known in self._listeners if known is not listener]

        return stop

    # --- several instances on one shared store -----------------------------------

    def apply_stored(
        self,
        state: StoredState,
        heartbeats: Mapping[EndpointRef, Heartbeat] | None = None,
        reports: Mapping[str, Mapping[EndpointRef, Report]] | None = None,
        *,
        stale: Callable[[], bool] | None = None,
    ) -> bool:
        """Adopt what the shared store holds, without writing anything back: services,
        registrations, admin states and serials as ``state`` has them, heartbeats newer
        than this instance's, and the other instances' probe verdicts (by instance).
        Publishes a snapshot only when something changed; returns whether it did.

        ``stale()``, asked under the lock, says that this instance wrote to the store
        after ``state`` was read: the state would undo that write here, so it is skipped
        (the caller reads again).
        """
        with self._lock:
            now = self._clock()
            changed = False
            if stale is None or not stale():
                changed = self._adopt_services(state.services)
                changed = self._adopt_registrations(state.registrations, now) or changed
                changed = self._adopt_admin(state.admin) or changed
                for apex, serial in state.serials.items():
                    if serial > self._serials.get(apex, 0):  # serials only grow
                        self._serials[apex] = serial
                        changed = True
                if changed:
                    self._reindex()
                    self._forget_missing()
            if heartbeats:
                changed = self._adopt_heartbeats(heartbeats, now) or changed
            if reports is not None:
                changed = self._adopt_reports(reports) or changed
            if changed:
                self._publish()
            return changed

    def probe_verdicts(self) -> dict[EndpointRef, bool]:
        """This instance's prober's verdicts (before any quorum), to share and to resume."""
        with self._lock:
            return dict(self._local_probe)

    def on_verdict(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every verdict of this instance's prober (from its thread)."""
        self._verdict_listeners.append(listener)

    def _shared_tables(self) -> tuple[dict[EndpointRef, Any], ...]:
        return (self._local_probe, self._reports, self._beats)

    def _decide_probe(self, ref: EndpointRef, reason: str = "") -> bool:
        """Set the endpoint's probe state from the verdicts (this instance's and the
        others'), without publishing; returns whether it changed."""
        others = self._reports.get(ref, {})
        verdict = decide(self._local_probe.get(ref), others.values(), self._clock(),
                         self.health_quorum)
        if verdict is None:
            return False
        if others:
            reason = f"{reason}; {verdict.reason()}" if reason else verdict.reason()
        old = self._current(ref)
        new = dataclasses.replace(old, probe_up=verdict.up, confirmed=True)
        return self._put_health(ref, old, new, reason)

    def _adopt_services(self, specs: Mapping[str, Mapping[str, Any]]) -> bool:
        adopted: dict[str, tuple[Service, Mapping[str, Any]]] = {}
        for name, spec in specs.items():
            known = self._api_services.get(name)
            if known is not None and known[1] == spec:
                adopted[name] = known
                continue
            try:
                adopted[name] = (parse_service(name, spec), spec)
            except ConfigError as exc:  # written by another version, say: keep serving
                log.error("stored service %s is invalid and ignored: %s", name, exc)
                if known is not None:
                    adopted[name] = known
        if adopted.keys() == self._api_services.keys() and all(
            adopted[name][1] == self._api_services[name][1] for name in adopted
        ):
            return False
        for name in adopted.keys() - self._api_services.keys():
            log.info("created service %s (through another instance)", name)
        for name in self._api_services.keys() - adopted.keys():
            log.info("deleted service %s (through another instance)", name)
        self._api_services = adopted
        return True

    def _adopt_registrations(self, registrations: Iterable[Registration], now: float) -> bool:
        adopted: dict[tuple[str, str], dict[Key, Endpoint]] = {}
        for reg in registrations:
            adopted.setdefault((reg.service, reg.pool), {})[reg.endpoint.key] = reg.endpoint
        if adopted == self._registered:
            return False
        before = _by_ref(self._registered)
        after = _by_ref(adopted)
        for ref, endpoint in after.items():
            old = before.get(ref)
            if old is None:
                log.info("registered endpoint %s (through another instance)", ref)
                if endpoint.heartbeat_timeout is not None:
                    self._last_heartbeat.setdefault(ref, now)  # grace until the first heartbeat
            if endpoint.lease is None:
                self._lease_until.pop(ref, None)
            elif old is None or old.lease != endpoint.lease:
                self._lease_until[ref] = now + endpoint.lease
        for key in adopted.keys() | self._registered.keys():
            if adopted.get(key) != self._registered.get(key):
                self._touch(key[0])
        for ref in before.keys() - after.keys():
            tables: tuple[dict[EndpointRef, Any], ...] = (
                self._health, self._last_heartbeat, self._checks, self._lease_until,
                self._history, *self._shared_tables())
            for table in tables:
                table.pop(ref, None)
            log.info("removed endpoint %s (through another instance)", ref)
        self._registered = adopted
        return True

    def _adopt_admin(self, admin: Mapping[EndpointRef, AdminState]) -> bool:
        if dict(admin) == self._admin:
            return False
        for ref in self._admin.keys() | admin.keys():
            old = self._current(ref)
            state = admin.get(ref, AdminState.ENABLED)
            if old.admin is not state:
                self._touch(ref.service)
                self._note_change(ref, old, dataclasses.replace(old, admin=state),
                                  f"admin state {state.value} (through another instance)")
        self._admin = dict(admin)
        return True

    def _adopt_heartbeats(self, heartbeats: Mapping[EndpointRef, Heartbeat], now: float) -> bool:
        changed = False
        for ref, beat in heartbeats.items():
            endpoint = self._endpoint(ref)
            if endpoint is None or beat.at <= self._beats.get(ref, float("-inf")):
                continue  # unknown here (yet), or not newer than what this instance saw
            self._beats[ref] = beat.at
            self._last_heartbeat[ref] = max(self._last_heartbeat.get(ref, beat.at), beat.at)
            if endpoint.lease is not None:
                self._lease_until[ref] = max(self._lease_until.get(ref, 0.0),
                                             beat.at + endpoint.lease)
            if now - beat.at > (endpoint.heartbeat_timeout or DEFAULT_HEARTBEAT_TIMEOUT):
                continue  # already too old: expiry says so
            old = self._current(ref)
            new = dataclasses.replace(old, heartbeat_up=True, draining=beat.draining,
                                      load=beat.load, confirmed=True)
            why = "heartbeat through another instance" + (" (draining)" if beat.draining else "")
            changed = self._put_health(ref, old, new, why) or changed
        return changed

    def _adopt_reports(self, reports: Mapping[str, Mapping[EndpointRef, Report]]) -> bool:
        by_ref: dict[EndpointRef, dict[str, Report]] = {}
        for instance, verdicts in reports.items():
            for ref, report in verdicts.items():
                if self._endpoint(ref) is not None:
                    by_ref.setdefault(ref, {})[instance] = report
        refs = self._reports.keys() | by_ref.keys()
        self._reports = by_ref
        changed = False
        for ref in refs:  # freshness changes with time: decide again even if unchanged
            changed = self._decide_probe(ref) or changed
        return changed

    # --- internals ----------------------------------------------------------------

    def _current(self, ref: EndpointRef) -> Health:
        """The endpoint's health with its admin state applied."""
        health = self._health.get(ref, FRESH)
        admin = self._admin.get(ref, AdminState.ENABLED)
        return health if health.admin is admin else dataclasses.replace(health, admin=admin)

    def _set_health(self, ref: EndpointRef, old: Health, new: Health, reason: str) -> None:
        if self._put_health(ref, old, new, reason):
            self._publish()

    def _put_health(self, ref: EndpointRef, old: Health, new: Health, reason: str) -> bool:
        """Keep ``new`` (without publishing); returns whether anything changed."""
        if new.state != old.state:  # up, down, draining, disabled: "since" in the API
            new = dataclasses.replace(new, since=self._clock())
        self._note_change(ref, old, new, reason)
        if new == old:
            return False
        self._health[ref] = new
        self._touch(ref.service)
        return True

    def _note_change(self, ref: EndpointRef, old: Health, new: Health, reason: str) -> None:
        """Log a change of the endpoint's state once, and keep it in its history."""
        if new.state == old.state:
            return
        self._history.setdefault(ref, deque(maxlen=HISTORY)).append(
            Transition(self._clock(), old.state, new.state, reason)
        )
        self._transitions[new.state] += 1
        log.warning("endpoint %s: %s -> %s (%s)", ref, old.state, new.state, reason,
                    extra={"endpoint": str(ref), "old": old.state, "new": new.state,
                           "reason": reason})

    def _remove(self, ref: EndpointRef, why: str) -> None:
        """Drop a registration, durably, and everything known of it."""
        if self._store is not None:
            self._store.delete_registration(ref)
        del self._registered[(ref.service, ref.pool)][(ref.address, ref.port)]
        self._touch(ref.service)
        tables: tuple[dict[EndpointRef, Any], ...] = (
            self._health, self._last_heartbeat, self._checks, self._lease_until, self._history,
            *self._shared_tables())
        for table in tables:
            table.pop(ref, None)
        if self._endpoint(ref) is None and ref in self._admin:  # no zone file endpoint stays
            if self._store is not None:
                self._store.save_admin(ref, AdminState.ENABLED)
            del self._admin[ref]
        served = self._services.get(ref.service)
        if served is not None:  # else it waited for its service, and DNS never showed it
            self._bump_serial(served[0])
        self._publish()
        log.info("%s endpoint %s", why, ref)

    def _forget_missing(self) -> None:
        tables: tuple[dict[EndpointRef, Any], ...] = (
            self._health, self._last_heartbeat, self._checks, self._history,
            *self._shared_tables())
        for table in tables:
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
        for name in services.keys() | self._services.keys():
            old, new = self._services.get(name), services.get(name)
            if old is None or new is None or old[0] != new[0]:
                self._restructured.update(found[0] for found in (old, new) if found is not None)
                self._touch(name)
            elif old[1] is not new[1]:
                self._touch(name)
        self._services = services
        self._configured = {
            (name, pool.name): frozenset(endpoint.key for endpoint in pool.endpoints)
            for name, (_, service) in services.items()
            for pool in service.pools
        }

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

    def _known(self, ref: EndpointRef) -> bool:
        """Whether ``_endpoint(ref)`` finds it, without building the pool's endpoints."""
        key = (ref.address, ref.port)
        pair = (ref.service, ref.pool)
        if key in self._configured.get(pair, ()):
            return True
        return ref.service in self._services and key in self._registered.get(pair, {})

    def _find_ref(
        self, service: str, pool: str | None, address: IPAddress, port: int | None
    ) -> EndpointRef:
        """The endpoint at ``address`` (and ``port``, when given); an address that several
        endpoints share needs their pool or port (see ``_only``)."""
        svc = self._service_named(service)
        name = svc.name
        pools = [pool] if pool is not None else [p.name for p in svc.pools]
        refs: list[EndpointRef] = []
        for candidate in pools:
            if svc.pool(candidate) is None:
                raise NotFound(f"no pool {candidate} in service {name.rstrip('.')}")
            refs.extend(EndpointRef(name, candidate, *key)
                        for key in self._endpoints(svc, candidate))
        return _only(refs, address, port, name)

    def _bump_serial(self, apex: str) -> None:
        serial = max(self._serials.get(apex, 0) + 1, int(self._clock())) % 2**32
        self._serials[apex] = serial
        if self._store is not None:  # a shared store may give a higher one (see Store)
            self._serials[apex] = self._store.save_serial(apex, serial)

    def _service_view(self, service: Service) -> ServiceView:
        pools = []
        views = []
        for pool in service.pools:
            if (service.name, pool.name) in self._registered:
                endpoints = tuple(self._endpoints(service, pool.name).values())
                full = dataclasses.replace(pool, endpoints=endpoints)
            else:  # the zone file's pool as it is: no second copy of its endpoints
                full, endpoints = pool, pool.endpoints
            pools.append(full)
            for endpoint in endpoints:
                ref = EndpointRef(service.name, pool.name, endpoint.address, endpoint.port)
                views.append(EndpointView(full, endpoint, self._current(ref), ref))
        changed = any(a is not b for a, b in zip(pools, service.pools, strict=True))
        full_service = dataclasses.replace(service, pools=tuple(pools)) if changed else service
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

    def _touch(self, service: str) -> None:
        """Mark a service whose view the next snapshot must rebuild."""
        self._dirty.add(service)

    def _publish(self) -> None:
        """Publish a new snapshot: the touched services' views and their zones' views are
        rebuilt, everything else is shared with the previous snapshot."""
        previous = self.snapshot.zones
        if self._rebuild_all:
            self._views = {}
            previous = {}
            dirty: Iterable[str] = self._services.keys()
        else:
            dirty = self._dirty
        touched: dict[str, list[str]] = {}  # zone -> its services with a new view
        for name in dirty:
            found = self._services.get(name)
            if found is None:
                self._views.pop(name, None)  # no longer served; its zone is restructured
                continue
            self._views[name] = self._service_view(found[1])
            touched.setdefault(found[0], []).append(name)
        zones: dict[str, ZoneView] = {}
        for apex, zone in self._zones.items():
            serial = self._serials.get(apex, 1)
            old = previous.get(apex)
            if old is not None and old.zone is zone and apex not in self._restructured:
                if apex not in touched and old.soa.data.serial == serial:  # type: ignore[union-attr]
                    zones[apex] = old
                    continue
                services = dict(old.services)
                for name in touched.get(apex, ()):
                    services[name] = self._views[name]
            else:  # in the order of a full rebuild: the zone file's, then the API's
                services = {name: self._views[name] for name, (holder, _) in
                            self._services.items() if holder == apex}
            zones[apex] = make_zone_view(zone, serial, services, old)
        self._dirty = set()
        self._restructured = set()
        self._rebuild_all = False
        self.generation += 1
        snapshot = Snapshot(self.generation, zones, self._locator)
        self.snapshot = snapshot
        for listener in self._listeners:
            listener(snapshot)


def _reuse(old: Zone | None, new: Zone) -> Zone:
    """``new``, or the equal objects already held: a reload that leaves a zone or a
    service as it was keeps its views (and their memos) and its serial."""
    if old is None:
        return new
    if old == new:
        return old
    services = {service.name: service for service in old.services}
    kept = tuple(
        services[s.name] if services.get(s.name) == s else s for s in new.services
    )
    return new if all(a is b for a, b in zip(kept, new.services, strict=True)) else (
        dataclasses.replace(new, services=kept)
    )


def _only(refs: Iterable[EndpointRef], address: IPAddress, port: int | None,
          service: str) -> EndpointRef:
    """The one of ``refs`` at ``address`` (and ``port``, when given). Without a port, an
    endpoint without one is meant when there is one. Endpoints in several pools, or on
    several ports, are a RequestError naming ``pool`` or ``port`` with the choices."""
    found = [ref for ref in refs
             if ref.address == address and (port is None or ref.port == port)]
    if port is None and any(ref.port is None for ref in found):
        found = [ref for ref in found if ref.port is None]
    if not found:
        raise NotFound(f"no endpoint {address} in {service.rstrip('.')}; register it first")
    pools = list(dict.fromkeys(ref.pool for ref in found))
    if len(pools) > 1:
        raise RequestError(f"pool: {address} has endpoints in pools {', '.join(pools)}; "
                           f"name one", "pool")
    if len(found) > 1:
        ports = ", ".join(str(ref.port) for ref in found)
        raise RequestError(f"port: {address} has endpoints on ports {ports}; name one",
                           "port")
    return found[0]


def _note(kept: tuple[str, bool, float, float | None] | None) -> CheckNote | None:
    return None if kept is None else CheckNote(*kept)


def _by_ref(registered: Mapping[tuple[str, str], Mapping[Key, Endpoint]]) -> dict[EndpointRef, Endpoint]:
    return {
        EndpointRef(service, pool, address, port): endpoint
        for (service, pool), endpoints in registered.items()
        for (address, port), endpoint in endpoints.items()
    }
