"""Endpoint selection for a service, as a chain of small steps.

Each step takes the candidate endpoints and returns the ones that go on, noting in
the trace why. The order of steps is data (``DEFAULT_CHAIN``):

    family   -> endpoints whose address family matches the query (A: IPv4, AAAA: IPv6)
    healthy  -> endpoints that are up, not draining, enabled; none: fail open to all
                that are enabled (answering something beats answering nothing)
    priority -> the best (lowest) priority tier that still has candidates
    select   -> weighted consistent hashing of the client subnet, ``answers`` of them

Pure: no I/O, no clock, no process-random state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_network

from gslb.engine.ring import hash_key, make_ring
from gslb.model import AddressData, AdminState, IPAddress, Record, RType
from gslb.snapshot import EndpointView, ServiceView

HASH_PREFIX_V4 = 24  # the client subnet that hashing (stickiness) keys on
HASH_PREFIX_V6 = 56


@dataclass(frozen=True, slots=True)
class Client:
    """Who is asking: the ECS address when the query had one, else the resolver."""

    address: IPAddress
    source_prefix: int | None = None  # ECS SOURCE PREFIX-LENGTH; None without ECS


@dataclass(slots=True)
class Context:
    service: ServiceView
    qtype: RType
    client: Client
    scope: int = 0  # most specific client prefix any step depended on
    trace: list[str] = field(default_factory=list)


Step = Callable[[list[EndpointView], Context], list[EndpointView]]


def step_family(candidates: list[EndpointView], ctx: Context) -> list[EndpointView]:
    version = 4 if ctx.qtype is RType.A else 6
    kept = [c for c in candidates if c.endpoint.address.version == version]
    ctx.trace.append(f"family: {len(kept)} of {len(candidates)} endpoints are IPv{version}")
    return kept


def step_healthy(candidates: list[EndpointView], ctx: Context) -> list[EndpointView]:
    serving = [c for c in candidates if c.health.serving]
    if serving or not candidates:
        ctx.trace.append(f"healthy: {len(serving)} of {len(candidates)} serving")
        return serving
    enabled = [c for c in candidates if c.health.admin is not AdminState.DISABLED]
    ctx.trace.append(f"healthy: none serving, failing open to {len(enabled)} enabled endpoints")
    return enabled


def step_priority(candidates: list[EndpointView], ctx: Context) -> list[EndpointView]:
    if not candidates:
        return candidates
    best = min(c.pool.priority for c in candidates)
    kept = [c for c in candidates if c.pool.priority == best]
    pools = sorted({c.pool.name for c in kept})
    ctx.trace.append(f"priority: tier {best} ({', '.join(pools)})")
    return kept


def client_bucket(client: Client) -> tuple[bytes, int]:
    """The client's hashing subnet, packed, and its prefix length (capped by ECS)."""
    limit = HASH_PREFIX_V4 if isinstance(client.address, IPv4Address) else HASH_PREFIX_V6
    if client.source_prefix is not None:
        limit = min(limit, client.source_prefix)
    net = ip_network((client.address, limit), strict=False)
    return net.network_address.packed + bytes([limit]), limit


def member_weights(candidates: Sequence[EndpointView]) -> list[float]:
    """Each endpoint's share: its pool's weight split among the pool's candidates by weight.

    Endpoints of weight 0 are standby: used only when no candidate has a weight.
    """
    pool_totals: dict[str, int] = {}
    for c in candidates:
        pool_totals[c.pool.name] = pool_totals.get(c.pool.name, 0) + c.endpoint.weight
    weights = []
    for c in candidates:
        total = pool_totals[c.pool.name]
        weights.append(c.pool.weight * c.endpoint.weight / total if total else 0.0)
    if not any(weights):
        return [1.0] * len(candidates)
    return weights


def step_select(candidates: list[EndpointView], ctx: Context) -> list[EndpointView]:
    count = ctx.service.service.answers
    weights = member_weights(candidates)
    members = [(c, w) for c, w in zip(candidates, weights, strict=False) if w > 0]
    if len(members) <= 1:
        ctx.trace.append(f"select: {len(members)} candidate(s), nothing to choose")
        return [c for c, _ in members]
    ring = make_ring(tuple((_member_id(c), w) for c, w in members))
    key, prefix = client_bucket(ctx.client)
    picked = [members[i][0] for i in ring.pick(hash_key(key), count)]
    ctx.scope = max(ctx.scope, prefix)
    ctx.trace.append(
        f"select: sticky hash of {ctx.client.address}/{prefix} picked "
        + ", ".join(str(c.endpoint.address) for c in picked)
    )
    return picked


def _member_id(view: EndpointView) -> str:
    port = "" if view.endpoint.port is None else str(view.endpoint.port)
    return f"{view.pool.name}|{view.endpoint.address}|{port}"


DEFAULT_CHAIN: tuple[Step, ...] = (step_family, step_healthy, step_priority, step_select)


@dataclass(frozen=True, slots=True)
class Selection:
    records: tuple[Record, ...]
    scope: int
    trace: tuple[str, ...]


def select(
    service: ServiceView,
    qtype: RType,
    client: Client,
    chain: Sequence[Step] = DEFAULT_CHAIN,
) -> Selection:
    """The A or AAAA records a service answers with for ``client``."""
    ctx = Context(service, qtype, client)
    candidates = list(service.endpoints)
    for step in chain:
        candidates = step(candidates, ctx)
    ttl = service.service.ttl
    seen: set[IPAddress] = set()
    records = []
    for c in candidates:  # two pools may hold the same address: answer it once
        if c.endpoint.address not in seen:
            seen.add(c.endpoint.address)
            records.append(Record(service.name, qtype, ttl, AddressData(c.endpoint.address)))
    return Selection(tuple(records), ctx.scope, tuple(ctx.trace))
