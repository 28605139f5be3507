"""Incremental snapshots: a change rebuilds only the views it touched, and what it
publishes is exactly what a rebuild of everything would publish.

Two registries get the same random sequence of changes (same clock); the second is made
to rebuild every view after each change (``set_locator``, a global change). After every
change the first one's snapshot must hold the same zones, services, endpoints, health
and last-good sets as the second's.
"""

from __future__ import annotations

import textwrap
from ipaddress import IPv4Address, ip_address
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gslb.config import load_zone_text
from gslb.engine.answer import answer
from gslb.engine.context import Client
from gslb.errors import GslbError
from gslb.model import AdminState, Endpoint, EndpointRef, RType, Zone
from gslb.registry import Registry
from gslb.store.contract import Registration, StoredState

ZONE = textwrap.dedent("""\
    zone: one.example
    nameservers: {ns1: [127.0.0.1]}
    records:
      static: {A: 192.0.2.200}
    services:
      a:
        answers: 2
        all_down: last_good
        check: {type: none}
        pools:
          eu: {continents: [EU], endpoints: [192.0.2.1, 192.0.2.2]}
          us: {continents: [NA], priority: 2, endpoints: [192.0.2.3]}
      b:
        check: {type: http, interval: 1}
        pools:
          eu: {endpoints: [192.0.2.11, 192.0.2.12]}
      deep.c:
        all_down: closed
        check: {type: tcp, port: 80}
        pools:
          main: {endpoints: [192.0.2.21]}
    """)
OTHER = textwrap.dedent("""\
    zone: two.example
    nameservers: {ns1: [127.0.0.1]}
    services:
      d:
        check: {type: heartbeat}
        pools:
          main: {endpoints: [198.51.100.1, 198.51.100.2]}
    """)
# zone file variants a reload may bring: a changed service, a new one, other records
VARIANTS = (
    ZONE,
    ZONE.replace("answers: 2", "answers: 3"),
    ZONE + "  e:\n    check: {type: none}\n    pools:\n      main: {endpoints: [192.0.2.31]}\n",
    ZONE.replace("192.0.2.200", "192.0.2.201"),
)
SERVICES = ("a.one.example.", "b.one.example.", "deep.c.one.example.", "d.two.example.",
            "api.one.example.", "api.two.example.", "e.one.example.")
POOLS = ("eu", "us", "main")
ADDRESSES = tuple(ip_address(f"192.0.2.{i}") for i in (1, 2, 3, 11, 12, 21, 77, 78)) + (
    ip_address("198.51.100.1"),)
API_SPECS: tuple[dict[str, Any], ...] = (
    {"check": {"type": "none"}, "pools": {"main": {"endpoints": ["192.0.2.41"]}}},
    {"answers": 1, "check": {"type": "none"},
     "pools": {"main": {"endpoints": ["192.0.2.41", "192.0.2.42"]}}},
)


def zones(variant: int, with_other: bool = True) -> list[Zone]:
    found = [load_zone_text(VARIANTS[variant], "one.yaml")]
    return found + ([load_zone_text(OTHER, "two.yaml")] if with_other else [])


class Pair:
    """The registry under test and its full-rebuild twin, fed the same changes."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.incremental = Registry(clock=lambda: self.now)
        self.full = Registry(clock=lambda: self.now)
        for registry in self.both:
            registry.load_zones(zones(0))

    @property
    def both(self) -> tuple[Registry, Registry]:
        return self.incremental, self.full

    def apply(self, change: tuple[Any, ...]) -> None:
        kind, *args = change
        outcomes = []
        for registry in self.both:
            try:
                outcomes.append(("ok", CHANGES[kind](registry, *args)))
            except GslbError as exc:
                outcomes.append(("error", str(exc)))
        assert outcomes[0][0] == outcomes[1][0], (change, outcomes)
        generation = self.full.generation
        self.full.set_locator(self.full.snapshot.locator)  # rebuild every view
        assert self.full.generation == generation + 1

    def check(self) -> None:
        # A batch of check results may wait up to a second for its snapshot when only
        # what answers barely use changed (the first RTT: Registry.note_checks); the
        # views it marked are what the next snapshot rebuilds, whenever it comes.
        with self.incremental._lock:
            self.incremental._publish()
        got, want = self.incremental.snapshot, self.full.snapshot
        assert list(got.zones) == list(want.zones)
        for apex, zone in want.zones.items():
            mine = got.zones[apex]
            assert list(mine.services) == list(zone.services), apex
            for name, view in zone.services.items():
                assert mine.services[name] == view, name  # service, endpoints, last_good
            assert mine.soa == zone.soa
            assert mine.rrsets == zone.rrsets
            assert mine.names == zone.names
            assert mine.zone == zone.zone


Target = tuple[str, str, int]  # service, pool, index into ADDRESSES


def _register(r: Registry, target: Target, port: int | None, weight: int,
              lease: float | None) -> None:
    service, pool, address = target
    r.register(service, pool, Endpoint(ADDRESSES[address], port, weight,
                                       heartbeat_timeout=5.0 if lease else None, lease=lease))


def _deregister(r: Registry, target: Target, port: int | None) -> None:
    service, pool, address = target
    r.deregister(service, pool, ADDRESSES[address], port)


def _heartbeat(r: Registry, target: Target, draining: bool, load: float) -> None:
    service, _, address = target
    r.heartbeat(service, None, ADDRESSES[address], None, draining, load)


def _probe(r: Registry, target: Target, up: bool) -> None:
    service, pool, address = target
    r.set_probe_state(EndpointRef(service, pool, ADDRESSES[address]), up, "test")


def _check(r: Registry, target: Target, rtt: float) -> None:
    service, pool, address = target
    r.note_check(EndpointRef(service, pool, ADDRESSES[address]), True, "200", rtt)


def _admin(r: Registry, target: Target, state: AdminState) -> None:
    service, pool, address = target
    r.set_admin(service, pool, ADDRESSES[address], None, state)


def _expire(r: Registry) -> None:
    r.expire_heartbeats()
    r.expire_leases()


def _put(r: Registry, service: str, spec: int) -> None:
    r.put_service(service, API_SPECS[spec])


def _delete(r: Registry, service: str) -> None:
    r.delete_service(service)


def _reload(r: Registry, variant: int, with_other: bool) -> None:
    r.load_zones(zones(variant, with_other))


def _stored(r: Registry, address: int, state: AdminState, spec: int, serial: int) -> None:
    """What another instance wrote to a shared store: one registration, one admin
    state, one API service, a serial."""
    r.apply_stored(StoredState(
        registrations=(Registration("a.one.example.", "eu",
                                    Endpoint(ADDRESSES[address], registered=True)),),
        serials={"one.example.": serial},
        services={"api.one.example.": API_SPECS[spec]},
        admin={EndpointRef("b.one.example.", "eu", ADDRESSES[3 + address % 2]): state},
    ))


CHANGES: dict[str, Any] = {
    "register": _register, "deregister": _deregister, "heartbeat": _heartbeat,
    "probe": _probe, "check": _check, "admin": _admin, "expire": _expire, "put": _put,
    "delete": _delete, "reload": _reload, "stored": _stored,
}

service = st.sampled_from(SERVICES)
pool = st.sampled_from(POOLS)
address = st.integers(0, len(ADDRESSES) - 1)
# mostly endpoints that exist (in the zone files, or registered by the changes), else any
EXISTING = ((SERVICES[0], "eu", 0), (SERVICES[0], "eu", 1), (SERVICES[0], "us", 2),
            (SERVICES[0], "eu", 6), (SERVICES[1], "eu", 3), (SERVICES[1], "eu", 4),
            (SERVICES[1], "eu", 7), (SERVICES[2], "main", 5), (SERVICES[3], "main", 8),
            (SERVICES[4], "main", 6), (SERVICES[6], "main", 7))
target = st.one_of(st.sampled_from(EXISTING), st.sampled_from(EXISTING),
                   st.tuples(service, pool, address))
port = st.sampled_from((None, None, 8080))
change = st.one_of(
    st.tuples(st.just("register"), target, port, st.sampled_from((1, 100)),
              st.sampled_from((None, None, 3.0))),
    st.tuples(st.just("deregister"), target, port),
    st.tuples(st.just("heartbeat"), target, st.booleans(), st.sampled_from((0.1, 0.9))),
    st.tuples(st.just("probe"), target, st.booleans()),
    st.tuples(st.just("check"), target, st.sampled_from((0.01, 0.02, 0.5))),
    st.tuples(st.just("admin"), target, st.sampled_from(list(AdminState))),
    st.tuples(st.just("expire")),
    st.tuples(st.just("put"), st.sampled_from(("api.one.example", "api.two.example",
                                               "e.one.example", "a.one.example",
                                               "nowhere.example")),
              st.integers(0, len(API_SPECS) - 1)),
    st.tuples(st.just("delete"), st.sampled_from(("api.one.example", "api.two.example",
                                                  "e.one.example", "a.one.example"))),
    st.tuples(st.just("reload"), st.integers(0, len(VARIANTS) - 1), st.booleans()),
    st.tuples(st.just("stored"), address, st.sampled_from(list(AdminState)),
              st.integers(0, len(API_SPECS) - 1), st.integers(0, 3_000_000)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(change, st.sampled_from((0.0, 0.0, 2.0, 20.0))), max_size=30))
def test_incremental_snapshots_equal_a_full_rebuild(changes: list[tuple[Any, float]]) -> None:
    pair = Pair()
    pair.check()
    for one, elapsed in changes:
        pair.now += elapsed
        generation = pair.incremental.generation
        pair.apply(one)
        assert pair.incremental.generation >= generation  # never goes back
        pair.check()


def test_an_untouched_service_keeps_its_view_and_what_the_engine_remembered() -> None:
    registry = Registry()
    registry.load_zones(zones(0))
    client = Client(IPv4Address("81.2.69.160"))
    answer(registry.snapshot, "a.one.example.", RType.A, client)  # fills a's memo
    before = registry.snapshot
    view_a = before.service("a.one.example.")
    view_d = before.service("d.two.example.")
    assert view_a is not None and view_a.memo

    registry.register("b.one.example", "eu", Endpoint(ip_address("192.0.2.13")))
    registry.set_probe_state(EndpointRef("b.one.example.", "eu", ip_address("192.0.2.11")),
                             False, "test")
    registry.heartbeat("d.two.example", None, ip_address("198.51.100.1"), None, False, None)

    after = registry.snapshot
    assert after.generation == before.generation + 3
    assert after.service("a.one.example.") is view_a  # memo and all
    assert view_a.memo
    assert after.service("b.one.example.") is not before.service("b.one.example.")
    assert after.service("d.two.example.") is not view_d
    # the register bumped one.example's serial; two.example kept its (and its index)
    serial = after.zones["one.example."].soa.data.serial  # type: ignore[union-attr]
    assert serial > before.zones["one.example."].soa.data.serial  # type: ignore[union-attr]
    assert after.zones["two.example."].rrsets is before.zones["two.example."].rrsets
    assert after.zones["one.example."].names is before.zones["one.example."].names
    assert before.service("b.one.example.") is not None  # the old snapshot is unchanged
    assert len(before.service("b.one.example.").endpoints) == 2  # type: ignore[union-attr]


def test_a_reload_that_leaves_a_service_alone_keeps_its_view() -> None:
    registry = Registry()
    registry.load_zones(zones(0))
    before = registry.snapshot
    registry.load_zones(zones(1))  # service a answers 3 now; b and deep.c are as they were
    after = registry.snapshot
    assert after.service("a.one.example.") is not before.service("a.one.example.")
    assert after.service("a.one.example.").service.answers == 3  # type: ignore[union-attr]
    assert after.service("b.one.example.") is before.service("b.one.example.")
    assert after.service("d.two.example.") is before.service("d.two.example.")
    assert after.zones["two.example."] is before.zones["two.example."]  # nothing changed there


def test_deleting_a_shadowed_api_service_drops_its_registrations_from_the_served_one() -> None:
    """An API service that a zone file's service of the same name shadows: deleting it
    removes the registrations under that name, which the zone file's service showed."""
    pair = Pair()
    for change in (("put", "e.one.example", 0), ("reload", 2, True),
                   ("register", ("e.one.example.", "main", 7), None, 100, None),
                   ("delete", "e.one.example")):
        pair.apply(change)
        pair.check()
    view = pair.incremental.snapshot.service("e.one.example.")
    assert view is not None
    assert [str(e.endpoint.address) for e in view.endpoints] == ["192.0.2.31"]
