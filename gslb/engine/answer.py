"""The answer engine: (snapshot, qname, qtype, client) -> answer, with a trace of why.

Pure: no I/O, no clock. Handles zone semantics (authority, NXDOMAIN vs NODATA,
CNAME chains within the zone, additional addresses for NS and MX targets, RFC 8482
ANY) and hands service names to the selection chain.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from gslb.engine.chain import select
from gslb.engine.context import Client
from gslb.model import HINFOData, MXData, NameData, Record, RType, SOAData
from gslb.snapshot import EndpointView, Snapshot, ZoneView

MAX_CNAME_CHAIN = 8  # links followed before answering with what we have


class Rcode(enum.IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16  # extended: needs OPT

    @classmethod
    def name_of(cls, number: int) -> str:
        """The rcode's mnemonic, or its number for one we never send."""
        try:
            return cls(number).name
        except ValueError:
            return str(number)


@dataclass(slots=True)
class Answer:
    """What the engine answers. Built for every query and only read after: not frozen,
    whose checked attribute setting makes a construction about 5 times as costly."""

    rcode: Rcode
    authoritative: bool
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    scope: int = 0  # ECS scope prefix length: how much of the client the answer used
    trace: tuple[str, ...] = ()
    # What a cache of answers must key on besides the question and the ECS option:
    # the bits of the resolver's address used as the client (None: not read), and
    # whether the answer drew on the query's ID (it may differ for the next query).
    source_scope: int | None = None
    per_query: bool = False
    # The service answered and the endpoints its address records came from, in order.
    service: str | None = None
    chosen: tuple[EndpointView, ...] = ()


def answer(
    snapshot: Snapshot, qname: str, qtype: RType | int, client: Client, *, explain: bool = True
) -> Answer:
    """Answer a query for ``qname`` (absolute, lower-cased) of ``qtype``.

    ``qtype`` may be any type number: types no zone holds get NODATA or NXDOMAIN.
    Without ``explain`` the selection steps write no trace: the DNS path needs none.
    """
    zone = snapshot.find_zone(qname)
    if zone is None:
        return Answer(Rcode.REFUSED, False, trace=(f"{qname} is in no zone of ours",))
    service = zone.services.get(qname)
    if service is not None and not explain and (qtype == RType.A or qtype == RType.AAAA):
        # the DNS path's common answer, with no trace to write
        rtype = qtype if isinstance(qtype, RType) else RType(qtype)
        selection = select(service, rtype, client, snapshot.locator, explain=False)
        if selection.records:  # positional: cheaper than keywords, per query
            return Answer(Rcode.NOERROR, True, selection.records, (), (), selection.scope, (),
                          selection.source_scope, selection.per_query, qname, selection.chosen)
    trace = [f"zone {zone.apex}"]
    if qtype == RType.ANY:
        return _any(zone, qname, trace)

    records: list[Record] = []
    scope = 0
    name = qname
    visited = [qname]
    for _ in range(MAX_CNAME_CHAIN + 1):
        service = zone.services.get(name)
        if service is not None and (qtype == RType.A or qtype == RType.AAAA):
            if records and client.source_prefix is not None:
                # an alias of a service, asked with ECS: the initial CNAME alone, so that
                # resolvers cache it once and the service's answer under its own scope
                # when they ask for it (RFC 7871 section 7.2.1)
                trace.append(f"ECS: answered with the alias alone; {name} is a service")
                return Answer(Rcode.NOERROR, True, tuple(records[:1]), trace=tuple(trace))
            rtype = qtype if isinstance(qtype, RType) else RType(qtype)
            selection = select(service, rtype, client, snapshot.locator, explain=explain)
            trace.append(f"service {name}")
            trace.extend(selection.trace)
            scope = max(scope, selection.scope)
            if not selection.records:
                negative = _negative(zone, Rcode.NOERROR, records, trace, scope)
                return replace(negative, source_scope=selection.source_scope,
                               per_query=selection.per_query)
            records.extend(selection.records)
            return Answer(
                Rcode.NOERROR,
                True,
                tuple(records),
                scope=scope,
                trace=tuple(trace),
                source_scope=selection.source_scope,
                per_query=selection.per_query,
                service=name,
                chosen=selection.chosen,
            )

        rrset = zone.rrsets.get((name, qtype))
        if rrset:
            records.extend(rrset)
            trace.append(f"{len(rrset)} {type_name(qtype)} record(s) at {name}")
            return Answer(
                Rcode.NOERROR,
                True,
                tuple(records),
                additional=_additional(zone, rrset),
                scope=scope,
                trace=tuple(trace),
            )

        cname = zone.rrsets.get((name, RType.CNAME))
        if cname is None:
            exists = name in zone.names
            trace.append(f"{name} {'has no ' + type_name(qtype) if exists else 'does not exist'}")
            rcode = Rcode.NOERROR if exists else Rcode.NXDOMAIN
            return _negative(zone, rcode, records, trace, scope)

        records.extend(cname)
        assert isinstance(cname[0].data, NameData)
        target = cname[0].data.target
        trace.append(f"{name} is an alias of {target}")
        if snapshot.find_zone(target) is not zone:
            return Answer(Rcode.NOERROR, True, tuple(records), scope=scope, trace=tuple(trace))
        if target in visited:  # a loop: each record once (RFC 2181 section 5)
            trace.append(f"CNAME loop back to {target}")
            return Answer(Rcode.NOERROR, True, tuple(records), scope=scope, trace=tuple(trace))
        visited.append(target)
        name = target

    trace.append(f"CNAME chain longer than {MAX_CNAME_CHAIN}")
    return Answer(Rcode.NOERROR, True, tuple(records), scope=scope, trace=tuple(trace))


def type_name(qtype: RType | int) -> str:
    return qtype.name if isinstance(qtype, RType) else f"TYPE{qtype}"


def negative_soa(zone: ZoneView) -> Record:
    """The SOA for the authority section of negative answers (RFC 2308 section 3)."""
    soa = zone.soa
    assert isinstance(soa.data, SOAData)
    return Record(soa.name, soa.rtype, min(soa.ttl, soa.data.minimum), soa.data)


def _negative(
    zone: ZoneView, rcode: Rcode, records: list[Record], trace: list[str], scope: int
) -> Answer:
    return Answer(
        rcode,
        True,
        tuple(records),
        authority=(negative_soa(zone),),
        scope=scope,
        trace=tuple(trace),
    )


def _any(zone: ZoneView, qname: str, trace: list[str]) -> Answer:
    """RFC 8482: one synthesised HINFO instead of every RRset at the name."""
    if qname not in zone.names:
        trace.append(f"{qname} does not exist")
        return _negative(zone, Rcode.NXDOMAIN, [], trace, 0)
    cname = zone.rrsets.get((qname, RType.CNAME))
    if cname:  # an alias has no other data to stand for (RFC 8482 section 4.2)
        trace.append(f"ANY: {qname} is an alias, answered with its CNAME")
        return Answer(Rcode.NOERROR, True, cname, trace=tuple(trace))
    trace.append("ANY: minimal answer (RFC 8482)")
    hinfo = Record(qname, RType.HINFO, zone.soa.ttl, HINFOData("RFC8482", ""))
    return Answer(Rcode.NOERROR, True, (hinfo,), trace=tuple(trace))


def _additional(zone: ZoneView, rrset: tuple[Record, ...]) -> tuple[Record, ...]:
    """Addresses of in-zone NS and MX targets (glue), so resolvers need no second query."""
    extra: list[Record] = []
    for record in rrset:
        if isinstance(record.data, MXData):
            target = record.data.exchange
        elif record.rtype is RType.NS and isinstance(record.data, NameData):
            target = record.data.target
        else:
            continue
        for rtype in (RType.A, RType.AAAA):
            extra.extend(zone.rrsets.get((target, rtype), ()))
    return tuple(extra)
