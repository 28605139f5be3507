"""What the selection steps share: who is asking, and what each step learned and decided."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from gslb.model import GeoInfo, IPAddress, RType
from gslb.snapshot import EndpointView, Locator, ServiceView

HASH_PREFIX_V4 = 24  # the client subnet that hashing (stickiness) keys on
HASH_PREFIX_V6 = 56
ECS_MAX_PREFIX_V4 = 24  # how much of an ECS subnet we use at most (RFC 7871 privacy advice)
ECS_MAX_PREFIX_V6 = 56


@dataclass(slots=True)
class Client:
    """Who is asking: the ECS address when the query had one, else the resolver.

    Built for every query and only read after: not frozen, whose checked attribute
    setting makes a construction about 5 times as costly on the DNS path.
    """

    address: IPAddress
    source_prefix: int | None = None  # ECS SOURCE PREFIX-LENGTH; None without ECS
    resolver: IPAddress | None = None  # the transport source, when ``address`` came from ECS
    nonce: int = 0  # a per-query number (the DNS ID) that random-like policies draw on


@dataclass(slots=True)
class Context:
    service: ServiceView
    qtype: RType
    client: Client
    locator: Locator | None = None
    scope: int = 0  # most specific client prefix any step depended on
    consulted: bool = False  # whether any step depended on the client's address at all
    per_query: bool = False  # whether a step drew on the query's nonce
    trace: list[str] = field(default_factory=list)
    explain: bool = True  # False: steps skip writing the trace (the DNS path's speed)
    depended: list[int] = field(default_factory=list)  # every prefix given to depend()
    pool_order: dict[str, tuple[float, ...]] = field(default_factory=dict)  # set by geo
    _geo: GeoInfo | None = None

    @property
    def geo(self) -> GeoInfo | None:
        """The client's GeoIP information, looked up once (None without a database)."""
        if self._geo is None and self.locator is not None:
            self._geo = self.locator.locate(self.client.address)
        return self._geo

    def depend(self, prefix: int) -> None:
        """Note that the answer depends on the client's first ``prefix`` bits. For an
        ECS client that is at most the bits of a subnet we use (/24, /56), and may be
        more than the resolver sent: the scope then says that its prefix was too short
        to decide (RFC 7871 section 7.2.1)."""
        self.depended.append(prefix)
        if self.client.source_prefix is not None:
            prefix = min(prefix, ecs_limit(self.client.address))
        self.scope = max(self.scope, prefix)
        self.consulted = True

    def draw(self) -> int:
        """The query's nonce, noting that the answer now differs from query to query."""
        self.per_query = True
        return self.client.nonce


Step = Callable[[list[EndpointView], Context], list[EndpointView]]


def ecs_limit(address: IPAddress) -> int:
    """How many bits of an ECS subnet of ``address``'s family we use at most."""
    return ECS_MAX_PREFIX_V4 if isinstance(address, IPv4Address) else ECS_MAX_PREFIX_V6


def client_bucket(client: Client) -> tuple[bytes, int]:
    """The client's hashing subnet, packed, and its prefix length (capped by ECS)."""
    address = client.address
    return bucket_of(int(address), isinstance(address, IPv4Address), client.source_prefix)


def bucket_of(value: int, v4: bool, source: int | None) -> tuple[bytes, int]:
    """``client_bucket`` for an address given as its integer value and family."""
    if v4:
        limit = HASH_PREFIX_V4 if source is None or source > HASH_PREFIX_V4 else source
        shift = 32 - limit
        return (value >> shift << shift).to_bytes(4, "big") + _PREFIX_OCTET[limit], limit
    limit = HASH_PREFIX_V6 if source is None or source > HASH_PREFIX_V6 else source
    shift = 128 - limit
    return (value >> shift << shift).to_bytes(16, "big") + _PREFIX_OCTET[limit], limit


_PREFIX_OCTET = tuple(bytes((prefix,)) for prefix in range(129))


def member_id(view: EndpointView) -> str:
    """A stable name for an endpoint on hash rings: the same on every instance."""
    return _member_id(view.pool.name, view.endpoint.address, view.endpoint.port)


@functools.lru_cache(maxsize=65_536)
def _member_id(pool: str, address: IPAddress, port: int | None) -> str:
    # cached: formatting an address costs more than the rest of a ring lookup
    return f"{pool}|{address}|{'' if port is None else port}"
