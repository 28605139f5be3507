"""Plain values the GSLB is made of: zones, records, services, pools, endpoints, health.

Everything here is frozen. Names are absolute, lower-cased and end with a dot
("www.gslb.example.com."); addresses are ``ipaddress`` objects, parsed at the edge.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


def fqdn(name: str) -> str:
    """``name`` as this package keeps names: lower-cased, absolute, ending with a dot."""
    return name.strip().lower().rstrip(".") + "."


class RType(enum.IntEnum):
    """DNS record types the zone files may hold (and ANY, which queries may ask for)."""

    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    HINFO = 13
    MX = 15
    TXT = 16
    AAAA = 28
    ANY = 255

    @classmethod
    def name_of(cls, number: int) -> str:
        """The type's mnemonic, or ``TYPE<n>`` (RFC 3597) for one we hold no data of."""
        try:
            return cls(number).name
        except ValueError:
            return f"TYPE{number}"


# --- record data --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddressData:
    """A or AAAA data."""

    address: IPAddress
    # the address's 4 or 16 octets, once: reading ``address.packed`` per answer costs more
    packed: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "packed", self.address.packed)


@dataclass(frozen=True, slots=True)
class NameData:
    """NS or CNAME data: a target name."""

    target: str


@dataclass(frozen=True, slots=True)
class MXData:
    preference: int
    exchange: str


@dataclass(frozen=True, slots=True)
class TXTData:
    """The character-strings of one TXT record, as bytes of at most 255 each: a text
    longer than that is split on bytes, so a UTF-8 character may straddle two."""

    strings: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class HINFOData:
    cpu: str
    os: str


@dataclass(frozen=True, slots=True)
class SOAData:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


RData = AddressData | NameData | MXData | TXTData | HINFOData | SOAData


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record. ``name`` is absolute and lower-cased."""

    name: str
    rtype: RType
    ttl: int
    data: RData


# --- services -------------------------------------------------------------------------


class CheckKind(enum.Enum):
    """How the prober decides that an endpoint is alive."""

    HTTP = "http"  # GET <path>, status within the expected range
    TCP = "tcp"  # a TCP connect succeeds
    NONE = "none"  # never probed, always up (static pools)
    HEARTBEAT = "heartbeat"  # never probed: up only while heartbeats arrive (push-only)


class Policy(enum.Enum):
    """How endpoints are picked within the chosen pools."""

    STICKY = "sticky"  # weighted consistent hashing of the client subnet (bounded by caps)
    WEIGHTED = "weighted"  # weighted random, seeded by the query so any instance agrees
    ROUND_ROBIN = "round_robin"  # rotate through the endpoints, query by query
    LEAST_LOADED = "least_loaded"  # lowest load reported in heartbeats
    FASTEST = "fastest"  # lowest health-check round-trip time
    FILL = "fill"  # first endpoint in order until its load reaches its cap, then the next


class AllDown(enum.Enum):
    """What a service answers when none of its endpoints is known to be healthy."""

    OPEN = "open"  # every enabled endpoint: something beats nothing
    CLOSED = "closed"  # NODATA
    LAST_GOOD = "last_good"  # the endpoints that were healthy last


@dataclass(frozen=True, slots=True)
class HealthCheck:
    kind: CheckKind = CheckKind.HTTP
    path: str = "/health"
    port: int | None = None  # None: the endpoint's own port
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 2
    expect_min: int = 200
    expect_max: int = 399
    body: str | None = None  # HTTP: the response body must contain this text
    host: str | None = None  # HTTP: the Host header (and the TLS server name)
    tls: bool = False  # HTTP: over TLS (https)
    tls_verify: bool = True  # HTTPS: verify the certificate (and the name, when ``host`` is set)

    @property
    def probed(self) -> bool:
        """Whether the prober runs this check (``none`` and ``heartbeat`` it never does)."""
        return self.kind is CheckKind.HTTP or self.kind is CheckKind.TCP


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An address that can serve a pool. Identified by (address, port) within its pool."""

    address: IPAddress
    port: int | None = None
    weight: int = 100
    registered: bool = False  # came from POST /register (persisted), not from a zone file
    heartbeat_timeout: float | None = None  # set: down when heartbeats stop for this long
    cap: float | None = None  # load (0-1) above which it takes no new clients (fill, sticky)
    check: HealthCheck | None = None  # overrides the service's check for this endpoint
    lease: float | None = None  # registered: removed unless heartbeats come within this many s

    @property
    def key(self) -> tuple[IPAddress, int | None]:
        return (self.address, self.port)

    @property
    def label(self) -> str:
        return endpoint_label(self.address, self.port)


def endpoint_label(address: IPAddress | str, port: int | None) -> str:
    """ADDRESS, ADDRESS:PORT or [IPV6]:PORT: how the API's paths and metrics name it."""
    text = str(address)
    if port is None:
        return text
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class GeoInfo:
    """Where a client address is, as far as the GeoIP database knows."""

    country: str | None
    continent: str | None
    location: Location | None
    prefix: int  # length of the database network holding the address (found or empty)
    found: bool
    # computed once: the engine keys its per-location plans on it, for every query
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_hash", hash((self.country, self.continent, self.location, self.prefix, self.found))
        )

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(
        self,
    ) -> tuple[type[GeoInfo], tuple[str | None, str | None, Location | None, int, bool]]:
        # rebuilt, not restored: the hash of a string differs from process to process
        return GeoInfo, (self.country, self.continent, self.location, self.prefix, self.found)


@dataclass(frozen=True, slots=True)
class Pool:
    """A region: endpoints that share a location, geo rules and a priority tier."""

    name: str
    priority: int = 1  # lower is preferred; the next tier is used when this one is down
    weight: int = 100
    countries: frozenset[str] = frozenset()
    continents: frozenset[str] = frozenset()
    location: Location | None = None
    endpoints: tuple[Endpoint, ...] = ()
    allow: tuple[IPNetwork, ...] = ()  # networks that POST /register may add addresses from

    def allows(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allow)


@dataclass(frozen=True, slots=True)
class Service:
    """A name whose A/AAAA answers are computed from the health of its pools."""

    name: str
    ttl: int = 30
    answers: int = 2
    policy: Policy = Policy.STICKY
    all_down: AllDown = AllDown.OPEN
    check: HealthCheck = field(default_factory=HealthCheck)
    pools: tuple[Pool, ...] = ()

    def pool(self, name: str) -> Pool | None:
        for pool in self.pools:
            if pool.name == name:
                return pool
        return None

    def check_of(self, endpoint: Endpoint) -> HealthCheck:
        """The check that applies to ``endpoint``: its own, else the service's."""
        return endpoint.check if endpoint.check is not None else self.check


@dataclass(frozen=True, slots=True)
class SOASettings:
    """The SOA fields an operator writes; the serial is managed by the registry."""

    mname: str
    rname: str
    ttl: int = 3600
    refresh: int = 3600
    retry: int = 600
    expire: int = 1209600
    minimum: int = 60


@dataclass(frozen=True, slots=True)
class Zone:
    """A delegated zone as configured: apex, SOA, static records and services."""

    apex: str
    soa: SOASettings
    records: tuple[Record, ...] = ()  # includes the apex NS records and glue
    services: tuple[Service, ...] = ()
    source: str = ""  # the file it came from, for messages


@dataclass(frozen=True, slots=True)
class EndpointRef:
    """Names one endpoint across the whole registry."""

    service: str
    pool: str
    address: IPAddress
    port: int | None = None
    # computed once: refs key the registry's and the prober's tables, looked up per check,
    # and an address's own hash is slow (ipaddress computes it in Python each time)
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.service, self.pool, self.address, self.port)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[EndpointRef], tuple[str, str, IPAddress, int | None]]:
        # rebuilt, not restored: the hash of a string differs from process to process
        return EndpointRef, (self.service, self.pool, self.address, self.port)

    def __str__(self) -> str:
        where = f"{self.address}" if self.port is None else f"{self.address}:{self.port}"
        return f"{self.service} {self.pool} {where}"


# --- health ---------------------------------------------------------------------------


class AdminState(enum.Enum):
    """An operator's override, which wins over what checks and heartbeats observe."""

    ENABLED = "enabled"  # answered when healthy
    DRAIN = "drain"  # no new answers, stays registered (answered only when failing open)
    DISABLED = "disabled"  # never answered


@dataclass(frozen=True, slots=True)
class Health:
    """What is known of an endpoint's liveness at one moment.

    ``probe_up`` comes from the prober (True before the first check: see README),
    ``heartbeat_up`` from heartbeats (None when the endpoint sends none).
    ``confirmed`` stays False until the first verdict, so a service that does not fail
    open can hold back endpoints nobody has checked yet.
    """

    probe_up: bool = True
    heartbeat_up: bool | None = None
    draining: bool = False  # the endpoint said "draining" in a heartbeat
    admin: AdminState = AdminState.ENABLED
    load: float | None = None
    rtt: float | None = None  # seconds, of the last successful check (for ``fastest``)
    confirmed: bool = False  # a check or heartbeat has spoken since the start
    since: float = 0.0  # clock time of the last change of ``state``

    @property
    def up(self) -> bool:
        return self.probe_up and self.heartbeat_up is not False

    @property
    def serving(self) -> bool:
        """Eligible for new answers: up and neither draining nor disabled."""
        return self.up and not self.draining and self.admin is AdminState.ENABLED

    @property
    def state(self) -> str:
        """One word for the state: an operator's override wins over observations."""
        if self.admin is AdminState.DISABLED:
            return "disabled"
        if not self.up:
            return "down"
        if self.draining or self.admin is AdminState.DRAIN:
            return "draining"
        return "up"


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of an endpoint's state, as kept in its history."""

    at: float
    old: str
    new: str
    reason: str
