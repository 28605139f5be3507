"""The shared store of several instances: Redis (``--state redis://host:port/db``).

Every instance writes what its API changed here and reads back what the others changed
(see ``gslb.store.sync``). Keys, in the database the URL names:

    gslb:registrations  hash: endpoint key -> the registration as JSON
    gslb:services       hash: name -> the service's definition as PUT (JSON)
    gslb:admin          hash: endpoint key -> admin state (only those not "enabled")
    gslb:serials        hash: zone apex -> SOA serial (only grows: see ``save_serial``)
    gslb:heartbeats     hash: endpoint key -> {"at", "draining", "load"}
    gslb:probes         hash: instance -> {"at", "verdicts": [[service, pool, address, port, up]]}
    gslb:changes        channel: each write publishes the writing instance's id

An endpoint key is the JSON list ``[service, pool, address, port]`` (port 0: none).
Each write is one MULTI/EXEC transaction that includes its PUBLISH, so a change and its
notification are never seen apart. A write returns once Redis acknowledged it; run Redis
with ``appendonly yes`` and ``appendfsync always`` so that acknowledged means on disk.

This is redis-py's synchronous client: the registry calls a store from its writer
threads, synchronously, under its lock. After a connection failure the store refuses
writes at once for a second instead of waiting for a timeout each time, so a Redis outage
cannot hold the registry's lock (and stall the prober) for long.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.client import Pipeline

from gslb.config import check_data, parse_check
from gslb.errors import ConfigError, StoreError
from gslb.health.quorum import Report
from gslb.model import AdminState, Endpoint, EndpointRef
from gslb.store.contract import Heartbeat, Registration, StoredState

log = logging.getLogger("gslb.store")

REGISTRATIONS = "gslb:registrations"
SERVICES = "gslb:services"
ADMIN = "gslb:admin"
SERIALS = "gslb:serials"
HEARTBEATS = "gslb:heartbeats"
PROBES = "gslb:probes"
CHANNEL = "gslb:changes"

TIMEOUT = 1.0  # seconds to connect, and to wait for a reply
RETRY_AFTER = 1.0  # seconds writes fail fast after a connection failure
FORGET_REPORTS = 600.0  # seconds after which a silent instance's report is deleted

# Keeps the proposed serial unless the hash holds it or more already (another instance
# changed the zone meanwhile): then the one after. Atomic, so that two instances changing
# a zone at once get different serials, and the last change the highest.
NEXT_SERIAL = """
local held = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local serial = tonumber(ARGV[2])
if serial <= held then serial = (held + 1) % 4294967296 end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', serial))
return serial
"""


def make_instance_id() -> str:
    """A name for this process among the instances: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class Shared:
    """Everything the store holds, read in one transaction."""

    state: StoredState
    heartbeats: dict[EndpointRef, Heartbeat] = field(default_factory=dict)
    # instance -> its verdicts; this instance's own report is left out
    reports: dict[str, dict[EndpointRef, Report]] = field(default_factory=dict)


class RedisStore:
    """A ``Store`` on Redis, shared by every instance given the same URL."""

    def __init__(self, url: str, instance: str | None = None) -> None:
        self.url = url
        self.instance = instance or make_instance_id()
        self.where = _display(url)
        try:
            self._redis = redis.Redis.from_url(
                url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT,
                decode_responses=True,
            )
            self._redis.ping()
        except (redis.RedisError, ValueError) as exc:
            raise StoreError(f"cannot reach the Redis store {self.where}: {exc}") from exc
        self._lock = threading.Lock()
        self.writes = 0  # state writes of this instance so far (see ``gslb.store.sync``)
        self._down_until = 0.0
        self._down_error = ""
        self._bad: set[tuple[str, str]] = set()  # invalid entries already logged
        self._forget: list[str] = []  # instances silent for FORGET_REPORTS

    # --- the Store protocol ----------------------------------------------------------

    def load(self) -> StoredState:
        return self.load_shared().state

    def save_registration(self, registration: Registration) -> None:
        e = registration.endpoint
        ref = EndpointRef(registration.service, registration.pool, e.address, e.port)
        value = json.dumps({
            "service": registration.service,
            "pool": registration.pool,
            "address": str(e.address),
            "port": e.port,
            "weight": e.weight,
            "heartbeat_timeout": e.heartbeat_timeout,
            "cap": e.cap,
            "lease": e.lease,
            "check": None if e.check is None else check_data(e.check),
        }, sort_keys=True)
        self._write(lambda pipe: pipe.hset(REGISTRATIONS, ref_key(ref), value))

    def delete_registration(self, ref: EndpointRef) -> None:
        key = ref_key(ref)

        def change(pipe: Pipeline) -> None:
            pipe.hdel(REGISTRATIONS, key)
            pipe.hdel(HEARTBEATS, key)

        self._write(change)

    def save_service(self, name: str, spec: Mapping[str, Any]) -> None:
        self._write(lambda pipe: pipe.hset(SERVICES, name, json.dumps(spec, sort_keys=True)))

    def delete_service(self, name: str) -> None:
        tables = (REGISTRATIONS, ADMIN, HEARTBEATS)
        found: dict[str, list[str]] = {}

        def read(pipe: Pipeline) -> None:  # between WATCH and MULTI: runs at once
            for table in tables:
                keys = [str(key) for key in pipe.hkeys(table)]  # decode_responses: str
                found[table] = [key for key in keys if _service_of(key) == name]

        def change(pipe: Pipeline) -> None:
            pipe.hdel(SERVICES, name)
            for table, keys in found.items():
                if keys:
                    pipe.hdel(table, *keys)

        self._write(change, watch=tables, read=read)

    def save_admin(self, ref: EndpointRef, state: AdminState) -> None:
        key = ref_key(ref)
        if state is AdminState.ENABLED:
            self._write(lambda pipe: pipe.hdel(ADMIN, key))
        else:
            self._write(lambda pipe: pipe.hset(ADMIN, key, state.value))

    def save_serial(self, apex: str, serial: int) -> int:
        results = self._write(lambda pipe: pipe.eval(NEXT_SERIAL, 1, SERIALS, apex, serial))
        return int(results[0])

    def save_heartbeat(self, ref: EndpointRef, heartbeat: Heartbeat) -> None:
        value = json.dumps({"at": heartbeat.at, "draining": heartbeat.draining,
                            "load": heartbeat.load})
        # not counted: heartbeats only move forward in time, a stale read undoes nothing
        self._write(lambda pipe: pipe.hset(HEARTBEATS, ref_key(ref), value), counted=False)

    def close(self) -> None:
        self._redis.close()

    # --- sharing between instances ---------------------------------------------------

    def load_shared(self) -> Shared:
        """Everything, in one transaction; tries Redis even while writes fail fast."""
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                for table in (REGISTRATIONS, SERIALS, SERVICES, ADMIN, HEARTBEATS, PROBES):
                    pipe.hgetall(table)
                registrations, serials, services, admin, beats, probes = pipe.execute()
        except redis.RedisError as exc:
            raise self._failed("read", exc) from exc
        self._down_until = 0.0
        state = StoredState(
            tuple(self._parse(REGISTRATIONS, registrations, lambda k, v: _registration(v))),
            dict(self._parse(SERIALS, serials, lambda k, v: (k, int(v)))),
            dict(self._parse(SERVICES, services, lambda k, v: (k, json.loads(v)))),
            dict(self._parse(ADMIN, admin, lambda k, v: (parse_ref_key(k), AdminState(v)))),
        )
        heartbeats = dict(self._parse(HEARTBEATS, beats, lambda k, v: (parse_ref_key(k),
                                                                         _heartbeat(v))))
        reports: dict[str, dict[EndpointRef, Report]] = {}
        now = time.time()
        self._forget = []
        for instance, (at, verdicts) in self._parse(PROBES, probes, _report):
            if now - at > FORGET_REPORTS:
                self._forget.append(instance)
            elif instance != self.instance:
                reports[instance] = {ref: Report(up, at) for ref, up in verdicts.items()}
        return Shared(state, heartbeats, reports)

    def save_report(self, verdicts: Mapping[EndpointRef, bool], at: float, notify: bool) -> None:
        """Share this instance's probe verdicts; ``notify`` the others when they changed
        (a refresh that only says "still here" needs no notification)."""
        value = json.dumps({"at": at, "verdicts": [
            [ref.service, ref.pool, str(ref.address), ref.port or 0, up]
            for ref, up in verdicts.items()
        ]})
        forget = self._forget

        def change(pipe: Pipeline) -> None:
            pipe.hset(PROBES, self.instance, value)
            if forget:
                pipe.hdel(PROBES, *forget)

        self._write(change, counted=False, notify=notify)

    # --- internals ---------------------------------------------------------------------

    def _write(
        self,
        change: Callable[[Pipeline], object],
        *,
        counted: bool = True,
        notify: bool = True,
        watch: tuple[str, ...] = (),
        read: Callable[[Pipeline], None] | None = None,
    ) -> list[Any]:
        """Run ``change`` in one MULTI/EXEC with the notification and return the replies;
        ``counted`` state writes count in ``writes``. With ``watch``, ``read`` runs first
        and the whole is retried if another client changed a watched key in between."""
        if time.monotonic() < self._down_until:
            raise StoreError(f"the Redis store {self.where} is unreachable: {self._down_error}")
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        if watch:
                            pipe.watch(*watch)  # type: ignore[no-untyped-call]
                            if read is not None:
                                read(pipe)
                        pipe.multi()
                        change(pipe)
                        if notify:
                            pipe.publish(CHANNEL, self.instance)
                        results: list[Any] = pipe.execute()
                        break
                    except redis.WatchError:
                        continue  # another instance changed a watched table: again
        except redis.RedisError as exc:
            raise self._failed("write to", exc) from exc
        if counted:
            with self._lock:
                self.writes += 1
        return results

    def _failed(self, what: str, exc: redis.RedisError) -> StoreError:
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            self._down_until = time.monotonic() + RETRY_AFTER
            self._down_error = str(exc) or type(exc).__name__
        return StoreError(f"cannot {what} the Redis store {self.where}: {exc}")

    def _parse(
        self, table: str, entries: Mapping[str, str], parse: Callable[[str, str], Any]
    ) -> list[Any]:
        """Parse each entry; an invalid one (written by another version, say) is logged
        once and skipped, so that it cannot stop every instance from syncing."""
        parsed = []
        for key, value in entries.items():
            try:
                parsed.append(parse(key, value))
            except (ValueError, TypeError, KeyError, IndexError, ConfigError) as exc:
                if (table, key) not in self._bad:
                    self._bad.add((table, key))
                    log.error("redis store: %s[%s] is invalid and ignored: %s", table, key, exc)
        return parsed


def ref_key(ref: EndpointRef) -> str:
    return json.dumps([ref.service, ref.pool, str(ref.address), ref.port or 0])


def parse_ref_key(key: str) -> EndpointRef:
    service, pool, address, port = json.loads(key)
    return EndpointRef(str(service), str(pool), ip_address(address), int(port) or None)


def _service_of(key: str) -> str | None:
    try:
        return str(json.loads(key)[0])
    except (ValueError, TypeError, IndexError):
        return None


def _registration(value: str) -> Registration:
    data = json.loads(value)
    check = data.get("check")
    endpoint = Endpoint(
        address=ip_address(data["address"]),
        port=data.get("port"),
        weight=int(data["weight"]),
        registered=True,
        heartbeat_timeout=data.get("heartbeat_timeout"),
        cap=data.get("cap"),
        check=None if check is None else parse_check(check),
        lease=data.get("lease"),
    )
    return Registration(str(data["service"]), str(data["pool"]), endpoint)


def _heartbeat(value: str) -> Heartbeat:
    data = json.loads(value)
    load = data.get("load")
    return Heartbeat(float(data["at"]), bool(data.get("draining")),
                     None if load is None else float(load))


def _report(instance: str, value: str) -> tuple[str, tuple[float, dict[EndpointRef, bool]]]:
    data = json.loads(value)
    verdicts = {
        EndpointRef(str(service), str(pool), ip_address(address), int(port) or None): bool(up)
        for service, pool, address, port, up in data["verdicts"]
    }
    return instance, (float(data["at"]), verdicts)


def _display(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
