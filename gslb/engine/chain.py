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

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_network

from gslb.engine import failover, family, geo, healthy
from gslb.engine import select as select_step
from gslb.engine.context import Client, Context, Step
from gslb.model import AddressData, IPAddress, Record, RType
from gslb.snapshot import Locator, ServiceView

DEFAULT_CHAIN: tuple[Step, ...] = (
    family.step,
    healthy.step,
    geo.step,
    failover.step,
    select_step.step,
)


@dataclass(frozen=True, slots=True)
class Selection:
    records: tuple[Record, ...]
    scope: int  # the ECS scope: bits of the ECS subnet depended on (0 without ECS)
    trace: tuple[str, ...]
    # Bits of the resolver's own address depended on, when it was the client (no ECS,
    # or an unusable one); None when no step read it.
    source_scope: int | None = None
    per_query: bool = False  # drew on the query's nonce: another query may differ


# Address space that names no place: RFC 1918, shared (CGNAT), loopback, link-local, ULA.
PRIVATE_NETWORKS = tuple(
    ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
              "127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8",
              "::1/128", "::/128", "fe80::/10", "fc00::/7")
)


def is_private(address: IPAddress) -> bool:
    return any(address in net for net in PRIVATE_NETWORKS if net.version == address.version)


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


def select(
    service: ServiceView,
    qtype: RType,
    client: Client,
    locator: Locator | None = None,
    chain: Sequence[Step] = DEFAULT_CHAIN,
) -> Selection:
    """The A or AAAA records a service answers with for ``client``."""
    client, note = effective_client(client, locator)
    ctx = Context(service, qtype, client, locator)
    if note:
        ctx.trace.append(note)
    candidates = list(service.endpoints)
    for step in chain:
        candidates = step(candidates, ctx)
    ttl = service.service.ttl
    records = [Record(service.name, qtype, ttl, AddressData(c.endpoint.address)) for c in candidates]
    from_ecs = client.source_prefix is not None
    return Selection(
        tuple(records),
        ctx.scope if from_ecs else 0,
        tuple(ctx.trace),
        source_scope=ctx.scope if ctx.consulted and not from_ecs else None,
        per_query=ctx.per_query,
    )
