"""Health by quorum: the decision over several instances' verdicts, and the registry
applying it (one instance with a broken path does not take an endpoint down)."""

from __future__ import annotations

import socket
import time
from ipaddress import ip_address

import pytest

from gslb.config import load_zone_text
from gslb.health.quorum import FRESH, Report, decide, needed_votes
from gslb.health.thread import HealthThread
from gslb.model import Endpoint, EndpointRef
from gslb.registry import CheckNote, Registry
from gslb.store.contract import StoredState

NOW = 1000.0
UP, DOWN = True, False


@pytest.mark.parametrize(
    ("quorum", "voters", "needed"),
    [(0, 1, 1), (0, 2, 2), (0, 3, 2), (0, 4, 3), (0, 5, 3),
     (1, 3, 1), (2, 1, 1), (2, 2, 2), (2, 5, 2), (9, 3, 3)],
)
def test_needed_votes(quorum: int, voters: int, needed: int) -> None:
    assert needed_votes(quorum, voters) == needed


@pytest.mark.parametrize(
    ("local", "others", "quorum", "up"),
    [
        (DOWN, [], 0, DOWN),  # alone: as without a quorum
        (UP, [], 0, UP),
        (DOWN, [UP], 0, UP),  # one of two sees it down: a broken path, not a dead endpoint
        (UP, [DOWN], 0, UP),
        (DOWN, [DOWN], 0, DOWN),
        (DOWN, [DOWN, UP], 0, DOWN),  # two of three
        (DOWN, [UP, UP], 0, UP),
        (DOWN, [UP], 1, DOWN),  # --health-quorum 1: any instance takes it down
        (None, [DOWN], 0, DOWN),  # no verdict here yet: the others decide
        (None, [UP, DOWN], 0, UP),
    ],
)
def test_decide(local: bool | None, others: list[bool], quorum: int, up: bool) -> None:
    verdict = decide(local, [Report(o, NOW - 1) for o in others], NOW, quorum)
    assert verdict is not None and verdict.up is up
    assert verdict.voters == len(others) + (local is not None)


def test_stale_reports_do_not_count() -> None:
    fresh, stale = Report(UP, NOW - FRESH + 0.5), Report(UP, NOW - FRESH - 0.5)
    verdict = decide(DOWN, [stale], NOW)
    assert verdict is not None and not verdict.up and verdict.voters == 1
    verdict = decide(DOWN, [fresh], NOW)
    assert verdict is not None and verdict.up and verdict.voters == 2
    assert decide(None, [stale], NOW) is None  # nobody has spoken


ZONE = """
zone: q.example
nameservers:
  ns1: [192.0.2.53]
services:
  www:
    check: {type: http, interval: 1}
    pools:
      main:
        endpoints: [{address: 192.0.2.1, port: 80}, {address: 192.0.2.2, port: 80}]
"""
REF = EndpointRef("www.q.example.", "main", ip_address("192.0.2.1"), 80)


def make_registry(clock: list[float], quorum: int = 0) -> Registry:
    registry = Registry(clock=lambda: clock[0])
    registry.health_quorum = quorum
    registry.load_zones([load_zone_text(ZONE, "q.yaml")])
    return registry


def up(registry: Registry, ref: EndpointRef = REF) -> bool:
    view = registry.snapshot.service(ref.service)
    assert view is not None
    return next(v.health.up for v in view.endpoints if v.endpoint == Endpoint(ref.address, 80))


def test_registry_one_instance_behaves_as_before() -> None:
    clock = [NOW]
    registry = make_registry(clock)
    registry.set_probe_state(REF, False, "2 failed checks")
    assert not up(registry)
    assert registry.probe_verdicts() == {REF: False}


def test_registry_quorum_over_the_other_instances_reports() -> None:
    clock = [NOW]
    registry = make_registry(clock)
    others = {"b": {REF: Report(UP, NOW)}}
    registry.apply_stored(_empty(), reports=others)
    generation = registry.generation

    # this instance's path is broken: it alone sees the endpoint down, which stays up
    registry.set_probe_state(REF, False, "2 failed checks")
    assert up(registry) and registry.probe_verdicts() == {REF: False}
    assert registry.notes(REF).history == ()  # no transition at all
    assert registry.generation == generation

    # the other instance agrees: down
    registry.apply_stored(_empty(), reports={"b": {REF: Report(DOWN, NOW)}})
    assert not up(registry)
    (transition,) = registry.notes(REF).history
    assert transition.new == "down" and "2 of 2 instances see it down" in transition.reason

    # the other instance stops reporting (stopped or cut off): this one decides alone
    clock[0] = NOW + FRESH + 1
    registry.set_probe_state(REF, True, "2 passed checks")
    assert up(registry)
    registry.set_probe_state(REF, False, "2 failed checks")
    assert not up(registry)


def test_registry_quorum_one_lets_any_instance_take_it_down() -> None:
    clock = [NOW]
    registry = make_registry(clock, quorum=1)
    registry.apply_stored(_empty(), reports={"b": {REF: Report(UP, NOW)}})
    registry.set_probe_state(REF, False, "2 failed checks")
    assert not up(registry)


def test_registry_reports_of_unknown_endpoints_are_ignored() -> None:
    clock = [NOW]
    registry = make_registry(clock)
    ghost = EndpointRef("www.q.example.", "main", ip_address("192.0.2.99"), 80)
    generation = registry.generation
    assert not registry.apply_stored(_empty(), reports={"b": {ghost: Report(DOWN, NOW)}})
    assert registry.generation == generation


def _empty() -> StoredState:
    return StoredState()


def test_a_prober_whose_path_is_broken_does_not_take_the_endpoint_down() -> None:
    """The real prober against a closed port, while another instance reports the
    endpoint up: this instance's verdict is down, the answer keeps the endpoint."""
    with socket.socket() as sock:  # nothing listens on this port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    zone = ZONE.replace("interval: 1", "interval: 0.1, timeout: 0.1").replace(
        "{address: 192.0.2.1, port: 80}", f"{{address: 127.0.0.1, port: {port}}}")
    registry = Registry()
    registry.load_zones([load_zone_text(zone, "q.yaml")])
    ref = EndpointRef("www.q.example.", "main", ip_address("127.0.0.1"), port)
    with HealthThread(registry):
        deadline = time.monotonic() + 3
        while registry.probe_verdicts().get(ref) is not False:
            registry.apply_stored(StoredState(), reports={"b": {ref: Report(UP, time.time())}})
            assert time.monotonic() < deadline, "no verdict from the prober"
            time.sleep(0.02)
        for _ in range(20):  # checks go on failing here; the other instance still sees it up
            registry.apply_stored(StoredState(), reports={"b": {ref: Report(UP, time.time())}})
            time.sleep(0.05)
        view = registry.snapshot.service(ref.service)
        assert view is not None
        (health,) = [v.health for v in view.endpoints if v.endpoint.port == port]
        assert health.up and health.confirmed
        assert registry.probe_verdicts()[ref] is False
        assert registry.notes(ref).history == ()
        assert "refused" in (registry.notes(ref).check or CheckNote("", True, 0, None)).result

        # the other instance stops reporting: this one's verdict stands alone
        registry.apply_stored(StoredState(), reports={})
        assert not registry.snapshot.service(ref.service).endpoints[0].health.up  # type: ignore[union-attr]
