"""JSON shapes of the HTTP API, rendered from an immutable snapshot.

Names are shown without their trailing dot ("www.gslb.example.com"). Times are unix
seconds; ``null`` means "never" or "not known". The shapes::

    service  {"name", "zone", "source": "api" | zone file path, "ttl", "answers", "policy",
              "all_down", "check", "pools": [pool]}
    check    {"type", "path", "port", "interval", "timeout", "rise", "fall", "expect",
              "body", "host", "tls", "tls_verify"}
    pool     {"name", "priority", "weight", "countries", "continents", "allow": [cidr],
              "location": {"lat", "lon"} | null, "endpoints": [endpoint]}
    endpoint {"address", "port", "weight", "heartbeat_timeout", "cap", "lease",
              "check": null | check (its own), "source": "zone file" | "registered",
              "answered": answers that named it since the server started, "health": health}
    health   {"up", "state": "up" | "down" | "draining" | "disabled", "admin", "since",
              "heartbeat": null | bool, "last_heartbeat", "lease_until", "load", "rtt_ms",
              "confirmed", "last_check": null | note, "history": [transition]}
    note     {"result", "ok", "at", "rtt_ms"}
    transition {"at", "from", "to", "reason"}   (oldest first, the last 20)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gslb.config import check_data
from gslb.dns.stats import EndpointKey
from gslb.engine.answer import Answer
from gslb.engine.context import Client
from gslb.model import (
    AddressData,
    Endpoint,
    EndpointRef,
    Health,
    HealthCheck,
    HINFOData,
    MXData,
    NameData,
    Pool,
    RData,
    Record,
    RType,
    TXTData,
)
from gslb.registry import CheckNote, EndpointNotes
from gslb.snapshot import EndpointView, ServiceView, Snapshot
from gslb.store.contract import StoreStatus

JSON = dict[str, Any]
Notes = Callable[[EndpointRef], EndpointNotes]  # registry.notes
Answered = Mapping[EndpointKey, int]  # DNS answers naming each endpoint (DnsStats)
Sources = Callable[[str], str]  # service name -> "api" or its zone file


def display_name(name: str) -> str:
    """An absolute name as users write it: without the trailing dot (the root stays ".")."""
    return name.rstrip(".") or "."


def note_json(note: CheckNote | None) -> JSON | None:
    if note is None:
        return None
    rtt_ms = None if note.rtt is None else round(note.rtt * 1000, 3)
    return {"result": note.result, "ok": note.ok, "at": note.at, "rtt_ms": rtt_ms}


def health_json(health: Health, notes: EndpointNotes) -> JSON:
    return {
        "up": health.up,
        "state": health.state,
        "admin": health.admin.value,
        "since": health.since or None,  # 0.0: no change seen since start
        "heartbeat": health.heartbeat_up,
        "last_heartbeat": notes.last_heartbeat,
        "lease_until": notes.lease_until,
        "load": health.load,
        "rtt_ms": None if health.rtt is None else round(health.rtt * 1000, 3),
        "confirmed": health.confirmed,
        "last_check": note_json(notes.check),
        "history": [
            {"at": t.at, "from": t.old, "to": t.new, "reason": t.reason} for t in notes.history
        ],
    }


def endpoint_json(endpoint: Endpoint) -> JSON:
    return {
        "address": str(endpoint.address),
        "port": endpoint.port,
        "weight": endpoint.weight,
        "heartbeat_timeout": endpoint.heartbeat_timeout,
        "cap": endpoint.cap,
        "lease": endpoint.lease,
        "check": None if endpoint.check is None else check_json(endpoint.check),
        "source": "registered" if endpoint.registered else "zone file",
    }


def registration_json(service: str, pool: str, endpoint: Endpoint) -> JSON:
    """An endpoint named across the registry: the answer to a write."""
    return {"service": display_name(service), "pool": pool, **endpoint_json(endpoint)}


def check_json(check: HealthCheck) -> JSON:
    return check_data(check)


def pool_json(pool: Pool, endpoints: list[JSON]) -> JSON:
    location = pool.location
    return {
        "name": pool.name,
        "priority": pool.priority,
        "weight": pool.weight,
        "countries": sorted(pool.countries),
        "continents": sorted(pool.continents),
        "allow": [str(network) for network in pool.allow],
        "location": None if location is None else {
            "lat": location.latitude,
            "lon": location.longitude,
        },
        "endpoints": endpoints,
    }


def endpoint_view_json(
    service: str, view: EndpointView, notes: Notes, answered: Answered | None = None
) -> JSON:
    e = view.endpoint
    found = notes(EndpointRef(service, view.pool.name, e.address, e.port))
    count = answered.get((service, view.pool.name, e.address, e.port), 0) if answered else 0
    return {**endpoint_json(e), "answered": count, "health": health_json(view.health, found)}


def service_json(
    zone: str, view: ServiceView, notes: Notes, source: str = "", answered: Answered | None = None
) -> JSON:
    service = view.service
    by_pool: dict[str, list[JSON]] = {pool.name: [] for pool in service.pools}
    for endpoint in view.endpoints:
        by_pool.setdefault(endpoint.pool.name, []).append(
            endpoint_view_json(service.name, endpoint, notes, answered)
        )
    return {
        "name": display_name(service.name),
        "zone": display_name(zone),
        "source": source,
        "ttl": service.ttl,
        "answers": service.answers,
        "policy": service.policy.value,
        "all_down": service.all_down.value,
        "check": check_json(service.check),
        "pools": [pool_json(pool, by_pool[pool.name]) for pool in service.pools],
    }


def services_json(
    snapshot: Snapshot, notes: Notes, sources: Sources, answered: Answered | None = None
) -> list[JSON]:
    """Every service of every zone, ordered by name."""
    found = [
        (name, apex, view)
        for apex, zone in snapshot.zones.items()
        for name, view in zone.services.items()
    ]
    return [
        service_json(apex, view, notes, sources(view.name), answered)
        for _, apex, view in sorted(found, key=_first)
    ]


def find_service_json(
    snapshot: Snapshot, name: str, notes: Notes, sources: Sources, answered: Answered | None = None
) -> JSON | None:
    """One service by its absolute lower-cased name, or None."""
    zone = snapshot.find_zone(name)
    view = zone.services.get(name) if zone else None
    if zone is None or view is None:
        return None
    return service_json(zone.apex, view, notes, sources(name), answered)


def find_endpoint_json(snapshot: Snapshot, ref: EndpointRef, notes: Notes) -> JSON | None:
    """An endpoint with its health, named across the registry, or None."""
    service = snapshot.service(ref.service)
    if service is None:
        return None
    for view in service.endpoints:
        if view.pool.name == ref.pool and view.endpoint.key == (ref.address, ref.port):
            return {
                "service": display_name(ref.service),
                "pool": ref.pool,
                **endpoint_view_json(ref.service, view, notes),
            }
    return None


def healthz_json(
    snapshot: Snapshot, store: StoreStatus | None = None, workers: list[JSON] | None = None
) -> JSON:
    """Liveness: DNS keeps answering while the store fails, or while a DNS worker is
    being replaced (the others answer), so those are "degraded"."""
    ok = (store is None or store.ok) and all(w["state"] == "serving" for w in workers or ())
    found: JSON = {
        "status": "ok" if ok else "degraded",
        "generation": snapshot.generation,
        "zones": sorted(display_name(apex) for apex in snapshot.zones),
    }
    if store is not None:
        found["store"] = {"kind": store.kind, "ok": store.ok, "error": store.error,
                          "since": store.since}
    if workers is not None:
        found["workers"] = workers
    return found


def _first(item: tuple[str, str, ServiceView]) -> str:
    return item[0]


def record_json(record: Record) -> JSON:
    return {
        "name": display_name(record.name) + ".",
        "type": record.rtype.name,
        "ttl": record.ttl,
        "data": rdata_text(record.data),
    }


def rdata_text(data: RData) -> str:
    if isinstance(data, AddressData):
        return str(data.address)
    if isinstance(data, NameData):
        return data.target
    if isinstance(data, MXData):
        return f"{data.preference} {data.exchange}"
    if isinstance(data, TXTData):
        # a character cut at a string's end shows as \xNN, not as a replacement character
        return " ".join(f'"{s.decode(errors="backslashreplace")}"' for s in data.strings)
    if isinstance(data, HINFOData):
        return f'"{data.cpu}" "{data.os}"'
    return (f"{data.mname} {data.rname} {data.serial} {data.refresh} {data.retry} "
            f"{data.expire} {data.minimum}")


def explain_json(
    snapshot: Snapshot, qname: str, qtype: RType | int, client: Client, result: Answer
) -> JSON:
    geo = snapshot.locator.locate(client.address) if snapshot.locator is not None else None
    return {
        "name": qname,
        "type": qtype.name if isinstance(qtype, RType) else f"TYPE{qtype}",
        "client": {
            "address": str(client.address),
            "ecs": None if client.source_prefix is None
            else f"{client.address}/{client.source_prefix}",
            "resolver": str(client.resolver or client.address),
            "geo": None if geo is None else {
                "found": geo.found,
                "country": geo.country,
                "continent": geo.continent,
                "location": None if geo.location is None
                else {"lat": geo.location.latitude, "lon": geo.location.longitude},
                "prefix": geo.prefix,
            },
        },
        "rcode": result.rcode.name,
        "authoritative": result.authoritative,
        "answer": [record_json(r) for r in result.answer],
        "authority": [record_json(r) for r in result.authority],
        "scope": result.scope if client.source_prefix is not None else None,
        "generation": snapshot.generation,
        "trace": list(result.trace),
    }
