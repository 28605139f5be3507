"""The Redis store shared by several instances, against a real redis-server: every
kind of change made through one registry reaches another, exactly, and nothing is lost
across a Redis restart; a Redis outage fails writes fast and loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from ipaddress import ip_address

import pytest

from gslb.config import load_zone_text
from gslb.daemon import open_store
from gslb.errors import NotShared, StoreError
from gslb.model import AdminState, Endpoint, EndpointRef, Health
from gslb.registry import Registry
from gslb.store.redis import ADMIN, HEARTBEATS, REGISTRATIONS, SERVICES, RedisStore, ref_key
from gslb.store.sync import RedisSync
from tests.redisfixtures import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, used by name

ZONE = """
zone: shared.example
nameservers:
  ns1: [192.0.2.53]
services:
  www:
    check: {type: none}
    pools:
      eu: {priority: 1, endpoints: [192.0.2.1]}
      us: {priority: 2, endpoints: []}
"""
WWW = "www.shared.example."
API_SERVICE = {"check": {"type": "none"}, "pools": {"main": {"endpoints": ["192.0.2.77"]}}}


class Instance:
    """One instance's registry and store, as the daemon wires them (without the network)."""

    def __init__(self, server: RedisServer, clock: list[float], name: str) -> None:
        self.store = RedisStore(server.url, instance=name)
        self.registry = Registry(self.store, clock=lambda: clock[0])
        self.registry.load_zones([load_zone_text(ZONE, "shared.yaml")])
        self.sync = RedisSync(self.store, self.registry, clock=lambda: clock[0])

    def endpoints(self, service: str = WWW) -> dict[tuple[str, str], Health]:
        view = self.registry.snapshot.service(service)
        if view is None:
            return {}
        return {(v.pool.name, str(v.endpoint.address)): v.health for v in view.endpoints}


@pytest.fixture
def clock() -> list[float]:
    return [time.time()]


@pytest.fixture
def pair(redis_server: RedisServer, clock: list[float]) -> Iterator[tuple[Instance, Instance]]:
    a, b = Instance(redis_server, clock, "a"), Instance(redis_server, clock, "b")
    yield a, b
    a.store.close()
    b.store.close()


def ep(address: str, port: int | None = None, **options: object) -> Endpoint:
    return Endpoint(ip_address(address), port, **options)  # type: ignore[arg-type]


def test_every_change_reaches_the_other_instance(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    a.registry.register(WWW, "us", ep("198.51.100.1", 8080, weight=7, heartbeat_timeout=30,
                                      lease=60))
    a.registry.put_service("api.shared.example", API_SERVICE)
    a.registry.set_admin(WWW, "eu", ip_address("192.0.2.1"), None, AdminState.DRAIN)

    assert b.sync.resync()
    seen = b.endpoints()
    assert set(seen) == {("eu", "192.0.2.1"), ("us", "198.51.100.1")}
    assert seen[("eu", "192.0.2.1")].admin is AdminState.DRAIN
    view = b.registry.snapshot.service(WWW)
    assert view is not None
    (registered,) = [v.endpoint for v in view.endpoints if v.endpoint.registered]
    assert registered == ep("198.51.100.1", 8080, weight=7, registered=True,
                            heartbeat_timeout=30, lease=60)
    assert set(b.endpoints("api.shared.example.")) == {("main", "192.0.2.77")}
    assert b.registry.service_spec("api.shared.example") == ("api", API_SERVICE)
    # the same state: the same serial, so both answer SOA queries alike
    assert b.registry.snapshot.zones["shared.example."].soa == (
        a.registry.snapshot.zones["shared.example."].soa)

    # nothing new: no new snapshot
    generation = b.registry.generation
    assert b.sync.resync() and b.registry.generation == generation

    a.registry.deregister(WWW, "us", ip_address("198.51.100.1"), 8080)
    a.registry.set_admin(WWW, "eu", ip_address("192.0.2.1"), None, AdminState.ENABLED)
    a.registry.delete_service("api.shared.example")
    b.sync.resync()
    assert set(b.endpoints()) == {("eu", "192.0.2.1")}
    assert b.endpoints()[("eu", "192.0.2.1")].admin is AdminState.ENABLED
    assert b.registry.snapshot.service("api.shared.example.") is None


def test_a_new_instance_starts_from_the_shared_state(
    redis_server: RedisServer, pair: tuple[Instance, Instance], clock: list[float]
) -> None:
    a, _ = pair
    a.registry.register(WWW, "us", ep("198.51.100.2"))
    c = Instance(redis_server, clock, "c")
    try:
        assert ("us", "198.51.100.2") in c.endpoints()
    finally:
        c.store.close()


def test_deleting_a_service_removes_all_it_had_in_one_transaction(
    redis_server: RedisServer, pair: tuple[Instance, Instance]
) -> None:
    a, _ = pair
    a.registry.put_service("api.shared.example", API_SERVICE)
    a.registry.register("api.shared.example", "main", ep("192.0.2.78", heartbeat_timeout=10))
    a.registry.heartbeat("api.shared.example", "main", ip_address("192.0.2.78"), None,
                         draining=False, load=0.5)
    a.registry.set_admin("api.shared.example", "main", ip_address("192.0.2.77"), None,
                         AdminState.DISABLED)
    a.registry.register(WWW, "us", ep("198.51.100.3"))  # another service's: stays
    raw = redis_server.client()
    assert raw.hlen(HEARTBEATS) == 1 and raw.hlen(ADMIN) == 1

    a.registry.delete_service("api.shared.example")
    assert raw.hkeys(SERVICES) == []
    assert raw.hkeys(REGISTRATIONS) == [
        ref_key(EndpointRef(WWW, "us", ip_address("198.51.100.3")))]
    assert raw.hlen(ADMIN) == 0 and raw.hlen(HEARTBEATS) == 0
    raw.close()


def test_heartbeats_and_leases_are_shared(
    pair: tuple[Instance, Instance], clock: list[float]
) -> None:
    a, b = pair
    address = ip_address("198.51.100.4")
    a.registry.register(WWW, "us", ep("198.51.100.4", heartbeat_timeout=5, lease=20))
    b.sync.resync()

    # a draining heartbeat sent to B drains the endpoint on A
    clock[0] += 1
    b.registry.heartbeat(WWW, "us", address, None, draining=True, load=0.25)
    a.sync.resync()
    health = a.endpoints()[("us", "198.51.100.4")]
    assert health.draining and health.load == 0.25 and health.up and not health.serving

    # heartbeats keep coming, to B only: A keeps the endpoint up, and its lease alive
    for _ in range(4):
        clock[0] += 4
        b.registry.heartbeat(WWW, "us", address, None, draining=False, load=None)
        a.sync.resync()
        assert a.registry.expire_heartbeats() == [] and a.registry.expire_leases() == []
    assert a.endpoints()[("us", "198.51.100.4")].serving

    # they stop: both mark it down by the shared time, then drop it when the lease ends
    clock[0] += 6
    a.sync.resync()
    assert len(a.registry.expire_heartbeats()) == 1
    assert len(b.registry.expire_heartbeats()) == 1
    clock[0] += 15
    assert len(a.registry.expire_leases()) == 1
    assert b.registry.expire_leases() in ([], [EndpointRef(WWW, "us", address)])
    b.sync.resync()
    assert ("us", "198.51.100.4") not in b.endpoints()


def test_probe_verdicts_are_shared_and_decided_by_quorum(
    pair: tuple[Instance, Instance], clock: list[float]
) -> None:
    a, b = pair
    ref = EndpointRef(WWW, "eu", ip_address("192.0.2.1"))
    a.registry.set_probe_state(ref, False, "2 failed checks")  # A's path is broken
    b.registry.set_probe_state(ref, True, "first check passed")
    a.store.save_report(a.registry.probe_verdicts(), clock[0], True)
    b.store.save_report(b.registry.probe_verdicts(), clock[0], True)
    a.sync.resync()
    b.sync.resync()
    assert a.endpoints()[("eu", "192.0.2.1")].up and b.endpoints()[("eu", "192.0.2.1")].up

    b.registry.set_probe_state(ref, False, "2 failed checks")  # really down: both see it
    b.store.save_report(b.registry.probe_verdicts(), clock[0], True)
    a.sync.resync()
    assert not a.endpoints()[("eu", "192.0.2.1")].up
    assert not b.endpoints()[("eu", "192.0.2.1")].up


def serial(instance: Instance) -> int:
    soa = instance.registry.snapshot.zones["shared.example."].soa
    return int(soa.data.serial)  # type: ignore[union-attr]


def test_instances_changing_a_zone_at_once_agree_on_its_serial_after(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    a.sync.resync()
    assert serial(a) == serial(b)
    start = serial(a)
    # a changes the zone twice while b, not yet in step, changes it once
    a.registry.register(WWW, "us", ep("198.51.100.3"))
    a.registry.register(WWW, "us", ep("198.51.100.4"))
    b.registry.register(WWW, "us", ep("198.51.100.5"))
    assert serial(a) == start + 2
    assert serial(b) == start + 3  # above every serial given before: b's change is newest

    assert a.sync.resync() and b.sync.resync()
    assert set(a.endpoints()) == set(b.endpoints())
    assert serial(a) == serial(b) == start + 3


def test_a_resync_that_could_undo_a_local_write_is_skipped(pair: tuple[Instance, Instance]) -> None:
    a, _ = pair
    before = a.store.load_shared()
    a.registry.register(WWW, "us", ep("198.51.100.5"))
    # the state read before the write, applied after it, must not remove the endpoint
    assert not a.registry.apply_stored(before.state, stale=lambda: True)
    assert ("us", "198.51.100.5") in a.endpoints()


def test_an_invalid_entry_is_logged_once_and_skipped(
    redis_server: RedisServer, pair: tuple[Instance, Instance], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    a.registry.register(WWW, "us", ep("198.51.100.6"))
    raw = redis_server.client()
    raw.hset(REGISTRATIONS, "garbage", "{not json")
    raw.close()
    with caplog.at_level(logging.ERROR, "gslb.store"):
        b.sync.resync()
        b.sync.resync()
    assert ("us", "198.51.100.6") in b.endpoints()
    assert len([r for r in caplog.records if "garbage" in r.getMessage()]) == 1


def test_outage_fails_writes_fast_keeps_state_and_loses_nothing(
    redis_server: RedisServer, pair: tuple[Instance, Instance]
) -> None:
    a, b = pair
    a.registry.register(WWW, "us", ep("198.51.100.7"))
    b.sync.resync()
    redis_server.stop()

    generation = a.registry.generation
    with pytest.raises(StoreError):
        a.registry.register(WWW, "us", ep("198.51.100.8"))
    started = time.monotonic()
    with pytest.raises(StoreError, match="unreachable"):
        a.registry.register(WWW, "us", ep("198.51.100.8"))
    assert time.monotonic() - started < 0.1  # fails fast: the registry's lock is not held
    assert a.registry.generation == generation  # nothing changed, nothing acknowledged
    assert ("us", "198.51.100.8") not in a.endpoints()
    # a heartbeat still counts here, and the sender is told the others did not see it
    with pytest.raises(NotShared, match="this instance only"):
        a.registry.heartbeat(WWW, "us", ip_address("198.51.100.7"), None, True, None)
    assert a.endpoints()[("us", "198.51.100.7")].draining
    with pytest.raises(StoreError):
        b.sync.resync()
    assert ("us", "198.51.100.7") in b.endpoints()  # B keeps its last state

    redis_server.start()  # the append-only file brings back every acknowledged write
    a.sync.resync()  # as each instance's sync loop does when Redis answers again
    b.sync.resync()
    assert ("us", "198.51.100.7") in b.endpoints()
    a.registry.register(WWW, "us", ep("198.51.100.8"))
    b.sync.resync()
    assert ("us", "198.51.100.8") in b.endpoints()


def test_notifications_reach_the_other_instance_at_once(pair: tuple[Instance, Instance]) -> None:
    a, b = pair

    async def scenario() -> list[float]:
        task = asyncio.create_task(b.sync.run())
        try:
            await wait(lambda: b.sync.status().ok and b.sync.resyncs > 0)
            took = []
            for i in range(10):
                started = time.monotonic()
                await asyncio.to_thread(a.registry.register, WWW, "us", ep(f"198.51.100.{20 + i}"))
                await wait(lambda i=i: ("us", f"198.51.100.{20 + i}") in b.endpoints())  # type: ignore[misc]
                took.append(time.monotonic() - started)
            return took
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    took = sorted(asyncio.run(scenario()))
    print(f"register on A -> in B's snapshot: median {took[5] * 1000:.1f} ms, "
          f"max {took[-1] * 1000:.1f} ms")
    assert took[-1] < 0.2


async def wait(condition: object, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("not within the time")
        await asyncio.sleep(0.002)


def test_an_unreachable_redis_stops_the_start_with_a_clear_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    expected = rf"cannot reach the Redis store redis://127.0.0.1:{port}/0"
    with pytest.raises(StoreError, match=expected) as raised:
        open_store(f"redis://:secret@127.0.0.1:{port}/0")
    assert "secret" not in str(raised.value)  # the password stays out of messages
    with pytest.raises(StoreError, match="unsupported state store"):
        open_store("memcached://127.0.0.1:1")
