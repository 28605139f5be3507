"""Immutable views of the registry that the answer engine reads.

A snapshot is built by the registry after every change and swapped in whole, so the
query path reads one consistent state without locks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gslb.model import (
    Endpoint,
    EndpointRef,
    GeoInfo,
    Health,
    IPAddress,
    Pool,
    Record,
    RType,
    Service,
    SOAData,
    Zone,
)


class Locator(Protocol):
    """Where an address is: a GeoIP database, or anything that answers the same way."""

    def locate(self, address: IPAddress) -> GeoInfo: ...


@dataclass(frozen=True, slots=True)
class EndpointView:
    pool: Pool
    endpoint: Endpoint
    health: Health
    ref: EndpointRef  # names it across the registry; the DNS counters key on it


@dataclass(frozen=True, slots=True)
class ServiceView:
    """A service with the health of each of its endpoints at snapshot time."""

    service: Service
    endpoints: tuple[EndpointView, ...]
    # (pool, address, port) of the endpoints that were serving last, for all_down: last_good
    last_good: frozenset[tuple[str, IPAddress, int | None]] = frozenset()
    # The answer engine's working values derived from this view (it fills them as
    # queries come; the view itself never changes, so they stay true while it lives).
    memo: dict[Any, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.service.name


@dataclass(frozen=True, slots=True)
class ZoneView:
    zone: Zone
    soa: Record  # with the current serial
    rrsets: Mapping[tuple[str, int], tuple[Record, ...]]  # keyed by (name, type number)
    names: frozenset[str]  # every name that exists: owners, services, empty non-terminals
    services: Mapping[str, ServiceView]

    @property
    def apex(self) -> str:
        return self.zone.apex


ZONE_MEMO_SIZE = 4096  # names remembered per snapshot by find_zone
_UNKNOWN = object()


@dataclass(frozen=True, slots=True)
class Snapshot:
    generation: int = 0
    zones: Mapping[str, ZoneView] = field(default_factory=dict)
    locator: Locator | None = None  # the GeoIP database answers are computed with
    # find_zone's answers so far: a GSLB is asked few names, each many times
    _zone_of: dict[str, ZoneView | None] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def find_zone(self, qname: str) -> ZoneView | None:
        """The zone that holds ``qname`` (lower-cased, absolute), by longest suffix."""
        known = self._zone_of
        zone = known.get(qname, _UNKNOWN)
        if zone is not _UNKNOWN:
            return zone  # type: ignore[return-value]
        name = qname
        while True:
            zone = self.zones.get(name)
            if zone is not None:
                break
            dot = name.find(".")
            if dot < 0 or dot == len(name) - 1:
                zone = self.zones.get(".")
                break
            name = name[dot + 1 :]
        if len(known) >= ZONE_MEMO_SIZE:
            known.clear()  # names made up by the asker: keep the memo bounded
        known[qname] = zone
        return zone

    def service(self, name: str) -> ServiceView | None:
        zone = self.find_zone(name)
        return zone.services.get(name) if zone else None


def make_zone_view(
    zone: Zone,
    serial: int,
    services: Mapping[str, ServiceView],
    previous: ZoneView | None = None,
) -> ZoneView:
    """Index a zone's records and names for lookups.

    ``previous``, the view of the same ``Zone`` object before a change, lends what the
    change left alone: its record index (all but the SOA) and its names when the set of
    services is the same. A change to one service of a thousand then costs a copy of
    two dictionaries, not a new index.
    """
    if previous is not None and previous.zone is zone:
        if previous.soa.data == _soa_data(zone, serial):
            soa, rrsets = previous.soa, previous.rrsets
        else:
            soa = _soa_record(zone, serial)
            rrsets = {**previous.rrsets, (zone.apex, RType.SOA): (soa,)}
        same_names = previous.services.keys() == services.keys()
        return ZoneView(
            zone=zone,
            soa=soa,
            rrsets=rrsets,
            names=previous.names if same_names else _names(zone, rrsets, services),
            services=dict(services),
        )
    soa = _soa_record(zone, serial)
    lists: dict[tuple[str, int], list[Record]] = {(zone.apex, RType.SOA): [soa]}
    for record in zone.records:
        lists.setdefault((record.name, record.rtype), []).append(record)
    rrsets = {key: tuple(value) for key, value in lists.items()}
    return ZoneView(
        zone=zone,
        soa=soa,
        rrsets=rrsets,
        names=_names(zone, rrsets, services),
        services=dict(services),
    )


def _soa_data(zone: Zone, serial: int) -> SOAData:
    s = zone.soa
    return SOAData(s.mname, s.rname, serial, s.refresh, s.retry, s.expire, s.minimum)


def _soa_record(zone: Zone, serial: int) -> Record:
    return Record(zone.apex, RType.SOA, zone.soa.ttl, _soa_data(zone, serial))


def _names(
    zone: Zone, rrsets: Mapping[tuple[str, int], object], services: Mapping[str, object]
) -> frozenset[str]:
    """Every name that exists in the zone: owners, services and, between them and the
    apex, empty non-terminals (RFC 8020)."""
    owners = {name for name, _ in rrsets} | set(services)
    names = set(owners)
    for owner in owners:
        name = owner
        while name != zone.apex and "." in name[:-1]:
            name = name[name.index(".") + 1 :]
            names.add(name)
    return frozenset(names)
