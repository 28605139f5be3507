"""Endpoint selection for a service: a chain of small steps, one module each.

Each step takes the candidate endpoints and returns the ones that go on, adding a line
to the trace. The order of steps is data (``DEFAULT_CHAIN``):

    family   -> endpoints of the query's address family
    healthy  -> up, not draining, enabled; else the service's all_down choice
    geo      -> pools ordered for this client: rules, tier, distance
    failover -> the first pool in that order that still has candidates
    select   -> ``answers`` endpoints by the service's policy

Pure: no I/O, no clock, no process-random state; every instance gives a client the
same answer from the same snapshot.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_network

from gslb.engine import failover, family, geo, healthy
from gslb.engine import select as select_step
from gslb.engine.context import (
    ECS_MAX_PREFIX_V4,
    ECS_MAX_PREFIX_V6,
    Client,
    Context,
    Step,
    bucket_of,
)
from gslb.engine.ring import hash_key
from gslb.model import AddressData, GeoInfo, IPAddress, Record, RType
from gslb.snapshot import EndpointView, Locator, ServiceView

MEMO_SIZE = 4096  # remembered (type, location) outcomes per service view

DEFAULT_CHAIN: tuple[Step, ...] = (
    family.step,
    healthy.step,
    geo.step,
    failover.step,
    select_step.step,
)


@dataclass(slots=True)  # built per query, only read: not frozen (see Answer)
class Selection:
    records: tuple[Record, ...]
    scope: int  # the ECS scope: bits of the ECS subnet depended on (0 without ECS)
    trace: tuple[str, ...]
    # Bits of the resolver's own address depended on, when it was the client (no ECS,
    # or an unusable one); None when no step read it.
    source_scope: int | None = None
    per_query: bool = False  # drew on the query's nonce: another query may differ
    chosen: tuple[EndpointView, ...] = ()  # the endpoints the records name, in order


# Address space that names no place: RFC 1918, shared (CGNAT), loopback, link-local, ULA.
PRIVATE_NETWORKS = tuple(
    ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
              "127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8",
              "::1/128", "::/128", "fe80::/10", "fc00::/7")
)


# Per family, the ranges' first and last addresses as sorted integers (none overlap):
# one bisection instead of a membership test per network, for every query with ECS.
_PRIVATE_FIRST: dict[int, list[int]] = {4: [], 6: []}
_PRIVATE_LAST: dict[int, list[int]] = {4: [], 6: []}
for _net in sorted(PRIVATE_NETWORKS, key=lambda n: (n.version, n.network_address)):
    _PRIVATE_FIRST[_net.version].append(int(_net.network_address))
    _PRIVATE_LAST[_net.version].append(int(_net.broadcast_address))


_V4_FIRST, _V4_LAST = _PRIVATE_FIRST[4], _PRIVATE_LAST[4]
_V6_FIRST, _V6_LAST = _PRIVATE_FIRST[6], _PRIVATE_LAST[6]


def is_private(address: IPAddress) -> bool:
    return _private(int(address), isinstance(address, IPv4Address))


def _private(value: int, v4: bool) -> bool:
    first, last = (_V4_FIRST, _V4_LAST) if v4 else (_V6_FIRST, _V6_LAST)
    i = bisect.bisect_right(first, value) - 1
    return i >= 0 and value <= last[i]


def effective_client(client: Client, locator: Locator | None) -> tuple[Client, str | None]:
    """An ECS address in private or loopback space stands for no one we can locate:
    use the resolver's address instead, unless the GeoIP database maps it."""
    address = client.address
    if client.resolver is None or not is_private(address):
        return client, None
    if locator is not None and locator.locate(address).found:
        return client, None
    return Client(client.resolver, None, None, client.nonce), (
        f"client: ECS {address} is private and unmapped; using resolver {client.resolver}"
    )


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A (type, location)'s outcome of every step but the last, and the last step's plan."""

    candidates: list[EndpointView]
    pool_order: dict[str, tuple[float, ...]]
    depended: tuple[int, ...]
    sticky: select_step.StickyPlan | None
    records: tuple[Record, ...]  # sticky: the address record of each plan member
    deepest: int  # the largest of ``depended``, 0 when empty


def _prepare(service: ServiceView, qtype: RType, client: Client, locator: Locator | None,
             geo: GeoInfo | None, key: tuple[bool, GeoInfo | None]) -> _Prepared:
    """The candidates after every step but the last, remembered in the service view's
    memo under ``key`` (``select`` looks there first).

    Those steps read of the client only its location (``geo``) and the prefixes they
    depend on, so their outcome for (type, location) holds for every client there; the
    last step (the policy) runs per query. Trace-less only.
    """
    trial = Context(service, qtype, client, locator, explain=False)
    trial._geo = geo
    candidates = list(service.endpoints)
    for step in DEFAULT_CHAIN[:-1]:
        candidates = step(candidates, trial)
    plan = select_step.sticky_plan(candidates, service)
    ttl = service.service.ttl
    records = () if plan is None else tuple(
        _address_record(service.name, qtype, ttl, c.endpoint.address) for c in plan.members
    )
    memo = service.memo
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    prepared = memo[key] = _Prepared(
        candidates, trial.pool_order, tuple(trial.depended), plan, records, max(trial.depended, default=0)
    )
    return prepared


@functools.lru_cache(maxsize=65_536)
def _address_record(name: str, qtype: RType, ttl: int, address: IPAddress) -> Record:
    return Record(name, qtype, ttl, AddressData(address))


def select(
    service: ServiceView,
    qtype: RType,
    client: Client,
    locator: Locator | None = None,
    chain: Sequence[Step] = DEFAULT_CHAIN,
    explain: bool = True,
) -> Selection:
    """The A or AAAA records a service answers with for ``client``; without ``explain``
    the steps write no trace (the records are the same)."""
    if not explain and chain is DEFAULT_CHAIN:
        # effective_client and client_bucket, inline: this
        # runs for every query the response cache does not answer
        address = client.address
        value = int(address)
        v4 = isinstance(address, IPv4Address)
        if client.resolver is not None and _private(value, v4):
            client = effective_client(client, locator)[0]
            address = client.address
            value = int(address)
            v4 = isinstance(address, IPv4Address)
        geo = locator.locate(address) if locator is not None else None
        key = (qtype is RType.AAAA, geo)  # a bool hashes faster than an enum member
        prepared = service.memo.get(key)
        if prepared is None:
            prepared = _prepare(service, qtype, client, locator, geo, key)
        plan = prepared.sticky
        if plan is not None:  # the common case, without a Context: hash, walk, done
            bucket, prefix = bucket_of(value, v4, client.source_prefix)
            planned = prepared.records
            picks = plan.pick(hash_key(bucket))
            members = plan.members
            views: tuple[EndpointView, ...]
            chosen: tuple[Record, ...]
            if len(picks) == 1:
                chosen, views = (planned[picks[0]],), (members[picks[0]],)
            else:
                chosen = tuple(planned[i] for i in picks)
                views = tuple(members[i] for i in picks)
            # the most specific prefix depended on (Context.depend, inline):
            # max(min(p, limit)) = min(max(p), limit)
            deepest = prefix if prefix > prepared.deepest else prepared.deepest
            if client.source_prefix is None:  # positional: cheaper than keywords, per query
                return Selection(chosen, 0, (), deepest, False, views)
            limit = ECS_MAX_PREFIX_V4 if v4 else ECS_MAX_PREFIX_V6
            return Selection(chosen, deepest if deepest < limit else limit, (), None, False,
                             views)
        ctx = Context(service, qtype, client, locator, explain=False)
        ctx._geo = geo
        ctx.pool_order = prepared.pool_order
        for prefix in prepared.depended:
            ctx.depend(prefix)
        candidates = chain[-1](prepared.candidates, ctx)
    else:
        client, note = effective_client(client, locator)
        ctx = Context(service, qtype, client, locator, explain=explain)
        if note and explain:
            ctx.trace.append(note)
        candidates = list(service.endpoints)
        for step in chain:
            candidates = step(candidates, ctx)
    ttl = service.service.ttl
    records = [_address_record(service.name, qtype, ttl, c.endpoint.address) for c in candidates]
    from_ecs = client.source_prefix is not None
    return Selection(
        tuple(records),
        ctx.scope if from_ecs else 0,
        tuple(ctx.trace),
        source_scope=ctx.scope if ctx.consulted and not from_ecs else None,
        per_query=ctx.per_query,
        chosen=tuple(candidates),
    )
