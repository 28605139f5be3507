"""Zone files (``zones/*.yaml``) and service definitions -> model, with validation.

Every problem is reported as ``file:line: field: message`` (or ``field: message`` for
JSON from the API), all at once, so an operator fixes a file in one pass. Loading
uses a safe YAML loader; nothing in a zone file can run code.

Names follow zone-file convention: a name ending in "." is absolute, anything else
is relative to the zone apex, and "@" is the apex itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path
from typing import Any

import yaml

from gslb.errors import ConfigError
from gslb.model import (
    AddressData,
    AllDown,
    CheckKind,
    Endpoint,
    HealthCheck,
    IPAddress,
    IPNetwork,
    Location,
    MXData,
    NameData,
    Policy,
    Pool,
    Record,
    RType,
    Service,
    SOASettings,
    TXTData,
    Zone,
    fqdn,
)

CONTINENTS = frozenset({"AF", "AN", "AS", "EU", "NA", "OC", "SA"})
MAX_TTL = 2**31 - 1
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_STATIC_TYPES = {"A", "AAAA", "CNAME", "TXT", "MX"}


# --- YAML with line numbers ---------------------------------------------------------


class _Map(dict[Any, Any]):
    """A mapping with the line it starts on and the line of each key."""

    def __init__(self, *args: Any, line: int = 0) -> None:
        super().__init__(*args)
        self.line = line
        # set here, not on the class: an empty _Map made for a bad value is reported on too
        self.key_lines: dict[Any, int] = {}


class _Seq(list[Any]):
    """A sequence with the line it starts on and the line of each item."""

    def __init__(self, *args: Any, line: int = 0) -> None:
        super().__init__(*args)
        self.line = line
        self.item_lines: list[int] = []


class _LineConstructor:
    """Mappings and sequences that remember their line numbers (a loader mix-in).

    A key given twice in one mapping is remembered in ``duplicates`` (line, key): YAML
    keeps the last silently, and a record or a setting would vanish unnoticed.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)  # type: ignore[call-arg]
        self.duplicates: list[tuple[int, Any]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:  # before merge keys ("<<") are flattened in
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node, deep=True)  # type: ignore[attr-defined]
                if key in seen:
                    self.duplicates.append((key_node.start_mark.line + 1, key))
                seen.add(key)
        plain = super().construct_mapping(node, deep=True)  # type: ignore[misc]
        result = _Map(plain, line=node.start_mark.line + 1)
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[attr-defined]
            if isinstance(key, str | int | float | bool):
                result.key_lines[key] = key_node.start_mark.line + 1
        return result

    def construct_int(self, node: yaml.ScalarNode) -> Any:
        # int() refuses more than 4300 digits with a bare ValueError, which has no line
        try:
            return super().construct_yaml_int(node)  # type: ignore[misc]
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None, None, "integer with too many digits", node.start_mark
            ) from None

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> Any:
        result = _Seq(super().construct_sequence(node, deep=True),  # type: ignore[misc]
                      line=node.start_mark.line + 1)
        result.item_lines = [item.start_mark.line + 1 for item in node.value]
        return result


class _LineLoader(_LineConstructor, yaml.SafeLoader):
    """The safe loader, with line numbers; its error messages name the offending text."""


# libyaml's parser when PyYAML has it: a zone file of a thousand services loads five
# times faster and leaves 14 MB less behind (benchmarks/scale.py). Its error messages
# say less ("found undefined alias", without the alias), so a file it refuses is read
# again by the pure-Python loader for the message.
_FastLineLoader: Any = _LineLoader
if hasattr(yaml, "CSafeLoader"):
    class _CLineLoader(_LineConstructor, yaml.CSafeLoader):
        """libyaml's safe loader, with line numbers."""

    _FastLineLoader = _CLineLoader

for _loader in {_LineLoader, _FastLineLoader}:
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                            _loader.construct_mapping)
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG,
                            _loader.construct_sequence)
    _loader.add_constructor("tag:yaml.org,2002:int", _loader.construct_int)


# --- problem collection -------------------------------------------------------------


@dataclass(slots=True)
class _Problems:
    """Collects problems with where they are, instead of stopping at the first."""

    source: str
    items: list[str] = field(default_factory=list)

    def add(self, container: Any, key: Any, path: str, message: str) -> None:
        line = _line(container, key)
        where = f"{self.source}:{line}: " if self.source and line else (
            f"{self.source}: " if self.source else ""
        )
        self.items.append(f"{where}{path}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def _line(container: Any, key: Any) -> int:
    """The line of ``container[key]`` in its file; 0 when unknown (JSON from the API)."""
    if isinstance(container, _Map):
        return container.key_lines.get(key, container.line)
    if isinstance(container, _Seq):
        if isinstance(key, int) and 0 <= key < len(container.item_lines):
            return container.item_lines[key]
        return container.line
    return 0


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# --- scalar readers: return None (and record a problem) when invalid -----------------


def _int(p: _Problems, m: Any, key: str, path: str, default: int, lo: int, hi: int) -> int:
    value = m.get(key, default) if isinstance(m, dict) else default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        p.add(m, key, _join(path, key), f"must be an integer from {lo} to {hi}, not {_shown(value)}")
        return default
    return value


def _float(
    p: _Problems, m: Any, key: str, path: str, default: float, lo: float, hi: float
) -> float:
    value = m.get(key, default) if isinstance(m, dict) else default
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
    if not math.isfinite(number) or not lo <= number <= hi:
        p.add(m, key, _join(path, key), f"must be a number from {lo} to {hi}, not {_shown(value)}")
        return default
    return number


def _shown(value: Any) -> str:
    """``value`` for a message; a huge one by its kind, so the message stays readable."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def _str(p: _Problems, m: Any, key: str, path: str, default: str | None = None) -> str | None:
    value = m.get(key, default) if isinstance(m, dict) else default
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        p.add(m, key, _join(path, key), f"must be a non-empty string, not {value!r}")
        return None
    return value


def _enum(p: _Problems, m: Any, key: str, path: str, kind: Any, default: Any) -> Any:
    text = m.get(key, default.value) if isinstance(m, dict) else default.value
    try:
        return kind(text)
    except ValueError:
        p.add(m, key, _join(path, key),
              f"must be one of {', '.join(x.value for x in kind)}, not {text!r}")
        return default


def _mapping(p: _Problems, parent: Any, key: Any, value: Any, path: str) -> dict[Any, Any]:
    if value is None:
        return _Map()
    if not isinstance(value, dict):
        kind = "a list" if isinstance(value, list) else type(value).__name__  # not "_Seq"
        p.add(parent, key, path, f"must be a mapping, not {kind}")
        return _Map()
    return value


def _list(value: Any) -> list[Any]:
    """A list, or a single value standing for a list of one."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _unknown_keys(p: _Problems, m: Any, allowed: Iterable[str], path: str) -> None:
    if isinstance(m, dict):
        allowed = set(allowed)
        for key in m:
            if key not in allowed:
                p.add(m, key, _join(path, key), f"unknown field (expected one of: "
                      f"{', '.join(sorted(allowed))})")


def parse_address(value: Any) -> IPAddress:
    """An IPv4 or IPv6 address; ValueError with a readable message otherwise."""
    if not isinstance(value, str):
        raise ValueError(f"must be an IP address string, not {value!r}")
    try:
        address = ip_address(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    # fe80::1%eth0 and fe80::1 would be two endpoints answering the same AAAA record
    if isinstance(address, IPv6Address) and address.scope_id is not None:
        raise ValueError(f"{value!r} must not carry a zone index ('%{address.scope_id}')")
    return address


_LIMITED_BROADCAST = IPv4Address("255.255.255.255")


def parse_endpoint_address(value: Any) -> IPAddress:
    """An address a client could be sent to; ValueError with a readable message otherwise.

    Static A/AAAA records keep ``parse_address``: 0.0.0.0 there is a known convention
    (a blackhole), but an endpoint at such an address can never be reached.
    """
    address = parse_address(value)
    # ::ffff:169.254.1.1 is judged as the IPv4 address it carries
    plain = (address.ipv4_mapped or address) if isinstance(address, IPv6Address) else address
    reason = (
        "unspecified" if plain.is_unspecified
        else "multicast" if plain.is_multicast
        else "the limited broadcast address" if plain == _LIMITED_BROADCAST
        else "link-local" if plain.is_link_local
        else None
    )
    if reason:
        raise ValueError(f"{address} is {reason}, never a reachable endpoint")
    return address


def absolute_name(value: str, apex: str) -> str:
    """``value`` as an absolute lower-cased name; relative names hang off ``apex``."""
    name = value.strip().lower()
    if name == "@":
        return apex
    if name.endswith("."):
        return name
    return f"{name}.{apex}" if apex != "." else f"{name}."


def check_name(name: str) -> str | None:
    """Why ``name`` (absolute) is not a valid host name, or None."""
    if name == ".":
        return None
    if len(name) > 254:
        return "name longer than 253 characters"
    for label in name[:-1].split("."):
        if not _LABEL.match(label):
            return f"invalid label {label!r} (letters, digits, '-' and '_', 1-63 characters)"
    return None


def in_zone(name: str, apex: str) -> bool:
    return apex == "." or name == apex or name.endswith("." + apex)


# --- services -----------------------------------------------------------------------


CHECK_FIELDS = (
    "type", "path", "port", "interval", "timeout", "rise", "fall", "expect",
    "body", "host", "tls", "tls_verify",
)


def _bool(p: _Problems, m: Any, key: str, path: str, default: bool) -> bool:
    value = m.get(key, default) if isinstance(m, dict) else default
    if not isinstance(value, bool):
        p.add(m, key, _join(path, key), f"must be true or false, not {value!r}")
        return default
    return value


def _parse_check(
    p: _Problems, parent: Any, value: Any, path: str, base: HealthCheck | None = None
) -> HealthCheck:
    """A check; fields it leaves out come from ``base`` (an endpoint's from its service's)."""
    m = _mapping(p, parent, "check", value, path)
    _unknown_keys(p, m, CHECK_FIELDS, path)
    default = base or HealthCheck()
    kind = _enum(p, m, "type", path, CheckKind, default.kind)
    check_path = _str(p, m, "path", path, default.path) or default.path
    if not check_path.startswith("/"):
        p.add(m, "path", _join(path, "path"), "must start with '/'")
    elif any(ord(c) <= 32 or ord(c) == 127 for c in check_path):
        p.add(m, "path", _join(path, "path"), "must not contain spaces or control characters")
    port = default.port
    if isinstance(m, dict) and m.get("port") is not None:
        port = _int(p, m, "port", path, 80, 1, 65535)
    interval = _float(p, m, "interval", path, default.interval, 0.05, 3600)
    timeout = _float(p, m, "timeout", path, default.timeout, 0.01, 600)
    if timeout > interval:
        p.add(m, "timeout", _join(path, "timeout"), "must not exceed the interval")
    expect_min, expect_max = default.expect_min, default.expect_max
    expect = m.get("expect")
    if expect is not None:
        match = re.fullmatch(r"\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?", str(expect))
        if not match:
            p.add(m, "expect", _join(path, "expect"),
                  f"must be a status code or a range like 200-399, not {expect!r}")
        else:
            expect_min = int(match.group(1))
            expect_max = int(match.group(2) or match.group(1))
            if not 100 <= expect_min <= expect_max <= 599:
                p.add(m, "expect", _join(path, "expect"), "must be within 100-599, low to high")
    body = _str(p, m, "body", path, default.body)
    if body is not None and len(body) > 1024:
        p.add(m, "body", _join(path, "body"), "must be at most 1024 characters")
    host = _str(p, m, "host", path, default.host)
    if host is not None:
        problem = check_name(fqdn(host)) if host.strip() else "must be a host name"
        if problem:
            p.add(m, "host", _join(path, "host"), problem)
    return HealthCheck(
        kind=kind,
        path=check_path,
        port=port,
        interval=interval,
        timeout=timeout,
        rise=_int(p, m, "rise", path, default.rise, 1, 100),
        fall=_int(p, m, "fall", path, default.fall, 1, 100),
        expect_min=expect_min,
        expect_max=expect_max,
        body=body,
        host=host.strip().lower().rstrip(".") if host else None,
        tls=_bool(p, m, "tls", path, default.tls),
        tls_verify=_bool(p, m, "tls_verify", path, default.tls_verify),
    )


def parse_check(data: Any, base: HealthCheck | None = None) -> HealthCheck:
    """A check from JSON-like data (the API's and the store's); ConfigError lists problems
    as ``check.FIELD: message``."""
    p = _Problems("")
    check = _parse_check(p, None, data, "check", base)
    p.raise_if_any()
    return check


def check_data(check: HealthCheck) -> dict[str, Any]:
    """``check`` as the data ``parse_check`` reads back into an equal check."""
    expect = (
        str(check.expect_min) if check.expect_min == check.expect_max
        else f"{check.expect_min}-{check.expect_max}"
    )
    return {
        "type": check.kind.value,
        "path": check.path,
        "port": check.port,
        "interval": check.interval,
        "timeout": check.timeout,
        "rise": check.rise,
        "fall": check.fall,
        "expect": expect,
        "body": check.body,
        "host": check.host,
        "tls": check.tls,
        "tls_verify": check.tls_verify,
    }


def _parse_endpoint(
    p: _Problems, parent: Any, index: int, value: Any, path: str, check: HealthCheck
) -> Endpoint | None:
    if isinstance(value, str):  # shorthand: just the address, reported at its line
        value = _Map({"address": value}, line=_line(parent, index))
        value.key_lines["address"] = value.line
    elif not isinstance(value, dict):
        p.add(parent, index, path, f"must be an address or a mapping with 'address', not {value!r}")
        return None
    m = _mapping(p, parent, index, value, path)
    _unknown_keys(p, m, ("address", "port", "weight", "cap", "check"), path)
    try:
        address = parse_endpoint_address(m.get("address"))
    except ValueError as exc:
        p.add(m, "address", _join(path, "address"), str(exc))
        return None
    port = m.get("port")
    if port is not None:
        port = _int(p, m, "port", path, 80, 1, 65535)
    cap = None if m.get("cap") is None else _float(p, m, "cap", path, 1.0, 0.0, 1.0)
    own = m.get("check")
    return Endpoint(
        address=address, port=port, weight=_int(p, m, "weight", path, 100, 0, 10000), cap=cap,
        check=None if own is None else _parse_check(p, m, own, _join(path, "check"), check),
    )


def _parse_allow(p: _Problems, m: Any, path: str) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for item in _list(m.get("allow")):
        try:
            networks.append(ip_network(str(item).strip(), strict=True))
        except ValueError as exc:
            p.add(m, "allow", _join(path, "allow"), f"{item!r} is not a network: {exc}")
    return tuple(networks)


def _parse_location(p: _Problems, parent: Any, value: Any, path: str) -> Location | None:
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 2:
        value = _Map({"lat": value[0], "lon": value[1]}, line=getattr(parent, "line", 0))
    m = _mapping(p, parent, "location", value, path)
    _unknown_keys(p, m, ("lat", "lon"), path)
    if "lat" not in m or "lon" not in m:
        p.add(parent, "location", path, "needs lat and lon (or [lat, lon])")
        return None
    return Location(
        _float(p, m, "lat", path, 0.0, -90, 90), _float(p, m, "lon", path, 0.0, -180, 180)
    )


def _codes(p: _Problems, m: Any, key: str, path: str, valid: Any) -> frozenset[str]:
    codes = set()
    for code in _list(m.get(key)):
        text = str(code).upper()
        if not valid(text):
            p.add(m, key, _join(path, key), f"{code!r} is not a valid code")
        else:
            codes.add(text)
    return frozenset(codes)


POOL_FIELDS = ("priority", "weight", "countries", "continents", "location", "endpoints", "allow")


def _parse_pool(
    p: _Problems, parent: Any, name: Any, value: Any, path: str, check: HealthCheck
) -> Pool:
    if value is None:  # '{}' is a pool (that registrations fill); null is a mistake
        p.add(parent, name, path, "must be a mapping ({} for an empty pool), not null")
    m = _mapping(p, parent, name, value, path)
    _unknown_keys(p, m, POOL_FIELDS, path)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        p.add(parent, name, path, "pool names are 1-64 letters, digits, '.', '_' or '-'")
    endpoints: list[Endpoint] = []
    raw = m.get("endpoints")
    seq = raw if isinstance(raw, list) else _list(raw)
    seen: set[tuple[IPAddress, int | None]] = set()
    for i, item in enumerate(seq):
        endpoint = _parse_endpoint(p, seq, i, item, f"{_join(path, 'endpoints')}[{i}]", check)
        if endpoint is None:
            continue
        if endpoint.key in seen:
            p.add(seq, i, f"{_join(path, 'endpoints')}[{i}]", "duplicate endpoint")
            continue
        seen.add(endpoint.key)
        endpoints.append(endpoint)
    return Pool(
        name=str(name),
        priority=_int(p, m, "priority", path, 1, 0, 1000),
        weight=_int(p, m, "weight", path, 100, 0, 10000),
        countries=_codes(p, m, "countries", path, _COUNTRY.match),
        continents=_codes(p, m, "continents", path, CONTINENTS.__contains__),
        location=_parse_location(p, m, m.get("location"), _join(path, "location")),
        endpoints=tuple(endpoints),
        allow=_parse_allow(p, m, path),
    )


SERVICE_FIELDS = ("ttl", "answers", "policy", "all_down", "check", "pools")


def _parse_service(
    p: _Problems, parent: Any, key: Any, full_name: str, value: Any, path: str
) -> Service:
    """``parent[key]`` (``key`` as written in the file) is the service ``full_name``."""
    m = _mapping(p, parent, key, value, path)
    _unknown_keys(p, m, SERVICE_FIELDS, path)
    policy = _enum(p, m, "policy", path, Policy, Policy.STICKY)
    all_down = _enum(p, m, "all_down", path, AllDown, AllDown.OPEN)
    check = _parse_check(p, m, m.get("check"), _join(path, "check"))
    pools_raw = _mapping(p, m, "pools", m.get("pools"), _join(path, "pools"))
    if not pools_raw and isinstance(value, dict | None) and isinstance(m.get("pools"), dict | None):
        # a service without pools has nothing to answer with, not even a registration
        container, field_key = (m, "pools") if value is not None else (parent, key)
        p.add(container, field_key, _join(path, "pools"),
              "required: at least one pool, name -> {...}")
    pools = tuple(
        _parse_pool(p, pools_raw, name, pool, _join(_join(path, "pools"), name), check)
        for name, pool in pools_raw.items()
    )
    return Service(
        name=full_name,
        ttl=_int(p, m, "ttl", path, 30, 0, 86400),
        answers=_int(p, m, "answers", path, 2, 1, 64),
        policy=policy,
        all_down=all_down,
        check=check,
        pools=pools,
    )


def parse_service(name: str, data: Any) -> Service:
    """A service from JSON-like data (the API's ``PUT /services/{name}``)."""
    p = _Problems("")
    full_name = absolute_name(name, ".")
    problem = check_name(full_name)
    if problem:
        p.add(None, None, "name", problem)
    service = _parse_service(p, None, None, full_name, data, "")
    p.raise_if_any()
    return service


# --- zones --------------------------------------------------------------------------


ZONE_FIELDS = ("zone", "ttl", "soa", "nameservers", "records", "services")


def _record_data(
    p: _Problems, m: Any, rtype: str, item: Any, apex: str, path: str
) -> AddressData | NameData | MXData | TXTData | None:
    if rtype in ("A", "AAAA"):
        try:
            address = parse_address(item)
        except ValueError as exc:
            p.add(m, rtype, path, str(exc))
            return None
        if (rtype == "A") != isinstance(address, IPv4Address):
            p.add(m, rtype, path, f"{address} is not an {'IPv4' if rtype == 'A' else 'IPv6'} address")
            return None
        return AddressData(address)
    if rtype == "CNAME":
        if not isinstance(item, str):
            p.add(m, rtype, path, "must be a name")
            return None
        target = absolute_name(item, apex)
        problem = check_name(target)
        if problem:
            p.add(m, rtype, path, problem)
            return None
        return NameData(target)
    if rtype == "TXT":
        text = str(item) if isinstance(item, str | int | float) else None
        if text is None:
            p.add(m, rtype, path, "must be text")
            return None
        data = text.encode()
        # split as bytes and kept as bytes: decoding a chunk would corrupt a character cut in two
        return TXTData(tuple(data[i : i + 255] for i in range(0, len(data), 255)) or (b"",))
    # MX: "10 mail" or {preference: 10, exchange: mail}
    words = item.split() if isinstance(item, str) else []
    # ASCII digits only: str.isdigit() is true of "²", which int() refuses
    if len(words) == 2 and re.fullmatch(r"[0-9]+", words[0]):
        item = {"preference": int(words[0]), "exchange": words[1]}
    if not isinstance(item, dict) or not isinstance(item.get("exchange"), str):
        p.add(m, rtype, path, "must be {preference: N, exchange: NAME} or 'N NAME'")
        return None
    preference = item.get("preference", 10)
    if isinstance(preference, bool) or not isinstance(preference, int) or not 0 <= preference <= 65535:
        p.add(m, rtype, path, "preference must be an integer from 0 to 65535")
        return None
    exchange = absolute_name(item["exchange"], apex)
    problem = check_name(exchange)
    if problem:
        p.add(m, rtype, path, problem)
        return None
    return MXData(preference, exchange)


def _parse_records(
    p: _Problems, doc: Any, apex: str, default_ttl: int, where: dict[str, tuple[Any, Any]]
) -> list[Record]:
    """Static records; ``where`` learns each owner's place in the file for later messages."""
    records: list[Record] = []
    raw = _mapping(p, doc, "records", doc.get("records"), "records")
    for owner, value in raw.items():
        path = _join("records", owner)
        if not isinstance(owner, str):
            p.add(raw, owner, path, "record names must be strings")
            continue
        name = absolute_name(owner, apex)
        problem = check_name(name) or (None if in_zone(name, apex) else f"{name} is outside {apex}")
        if problem:
            p.add(raw, owner, path, problem)
            continue
        where[name] = (raw, owner)
        m = _mapping(p, raw, owner, value, path)
        ttl = _int(p, m, "ttl", path, default_ttl, 0, MAX_TTL)
        for rtype in m:
            if rtype == "ttl":
                continue
            if rtype not in _STATIC_TYPES:
                hint = " (delegations are not supported; apex NS come from 'nameservers')" if (
                    rtype == "NS") else ""
                p.add(m, rtype, _join(path, rtype),
                      f"unsupported type (use {', '.join(sorted(_STATIC_TYPES))}){hint}")
                continue
            items = _list(m[rtype])
            if rtype == "CNAME" and len(items) != 1:
                p.add(m, rtype, _join(path, rtype), "a name has exactly one CNAME")
                continue
            for item in items:
                data = _record_data(p, m, rtype, item, apex, _join(path, rtype))
                if data is not None:
                    records.append(Record(name, RType[rtype], ttl, data))
    return records


def _parse_nameservers(
    p: _Problems, doc: Any, apex: str, ttl: int
) -> tuple[list[Record], list[str]]:
    """Apex NS records and the glue addresses of in-zone nameservers."""
    raw = doc.get("nameservers")
    records: list[Record] = []
    names: list[str] = []
    if not isinstance(raw, dict) or not raw:
        p.add(doc, "nameservers", "nameservers",
              "required: a mapping of nameserver name -> glue addresses")
        return records, names
    for ns, addresses in raw.items():
        path = _join("nameservers", ns)
        name = absolute_name(str(ns), apex)
        problem = check_name(name)
        if problem:
            p.add(raw, ns, path, problem)
            continue
        names.append(name)
        records.append(Record(apex, RType.NS, ttl, NameData(name)))
        glue = _list(addresses)
        if in_zone(name, apex) and not glue:
            p.add(raw, ns, path, "an in-zone nameserver needs glue addresses")
        if glue and not in_zone(name, apex):
            p.add(raw, ns, path, "glue is only for nameservers inside the zone")
            continue
        for item in glue:
            try:
                address = parse_address(item)
            except ValueError as exc:
                p.add(raw, ns, path, str(exc))
                continue
            rtype = RType.A if isinstance(address, IPv4Address) else RType.AAAA
            records.append(Record(name, rtype, ttl, AddressData(address)))
    return records, names


def _parse_soa(p: _Problems, doc: Any, apex: str, nameservers: list[str]) -> SOASettings:
    m = _mapping(p, doc, "soa", doc.get("soa"), "soa")
    _unknown_keys(p, m, ("primary", "contact", "ttl", "refresh", "retry", "expire", "minimum"),
                  "soa")
    default = SOASettings(mname="", rname="")
    primary = _str(p, m, "primary", "soa")
    mname = absolute_name(primary, apex) if primary else (nameservers[0] if nameservers else apex)
    contact = _str(p, m, "contact", "soa") or f"hostmaster.{apex}"
    if "@" in contact:  # hostmaster@example.com -> hostmaster.example.com.
        local, _, domain = contact.partition("@")
        contact = f"{local.replace('.', chr(92) + '.')}.{domain.rstrip('.')}."
    rname = contact if contact.endswith(".") else absolute_name(contact, apex)
    return SOASettings(
        mname=mname,
        rname=rname.lower(),
        ttl=_int(p, m, "ttl", "soa", default.ttl, 0, MAX_TTL),
        refresh=_int(p, m, "refresh", "soa", default.refresh, 1, MAX_TTL),
        retry=_int(p, m, "retry", "soa", default.retry, 1, MAX_TTL),
        expire=_int(p, m, "expire", "soa", default.expire, 1, MAX_TTL),
        minimum=_int(p, m, "minimum", "soa", default.minimum, 0, 86400),
    )


def _check_conflicts(
    p: _Problems, records: list[Record], services: dict[str, tuple[Any, Any]],
    where: dict[str, tuple[Any, Any]],
) -> None:
    by_name: dict[str, set[RType]] = {}
    for record in records:
        by_name.setdefault(record.name, set()).add(record.rtype)
    for name, types in by_name.items():
        container, key = where.get(name, (None, None))
        if RType.CNAME in types and len(types) > 1:
            p.add(container, key, _join("records", key), f"{name} has a CNAME and other records")
        if name in services and types & {RType.CNAME, RType.A, RType.AAAA}:
            container, key = services[name]
            p.add(container, key, _join("services", key),
                  f"{name} is a service and also has static A/AAAA/CNAME records")


def _check_cname_loops(
    p: _Problems, records: list[Record], where: dict[str, tuple[Any, Any]]
) -> None:
    """A chain of this zone's CNAMEs that comes back on itself can never be answered.
    Only names inside the zone can be followed; a CNAME leaving it ends the chain."""
    targets = {
        r.name: r.data.target for r in records
        if r.rtype is RType.CNAME and isinstance(r.data, NameData)
    }
    order = {name: i for i, name in enumerate(targets)}  # file order
    looped: set[str] = set()
    for start in targets:
        chain: list[str] = []
        name = start
        while name in targets and name not in chain and name not in looped:
            chain.append(name)
            name = targets[name]
        if name not in chain:
            continue  # leaves the zone, ends at a non-CNAME, or runs into a known loop
        loop = chain[chain.index(name):]
        looped.update(loop)
        first = min(loop, key=order.__getitem__)
        at = loop.index(first)
        shown = " -> ".join([*loop[at:], *loop[:at], first])
        raw, owner = where[first]
        p.add(raw[owner], "CNAME", _join(_join("records", owner), "CNAME"),
              f"CNAME loop: {shown}")


def parse_zone(doc: Any, source: str = "") -> Zone:
    """A zone from a parsed zone-file document; ConfigError lists every problem."""
    p = _Problems(source)
    if not isinstance(doc, dict):
        p.add(None, None, "zone file", "must be a mapping with 'zone', 'nameservers', ...")
        p.raise_if_any()
    _unknown_keys(p, doc, ZONE_FIELDS, "")
    apex_text = _str(p, doc, "zone", "") or ""
    if not apex_text:
        p.add(doc, "zone", "zone", "required: the zone apex, e.g. gslb.example.com")
        p.raise_if_any()
    apex = fqdn(apex_text)
    problem = check_name(apex)
    if problem:
        p.add(doc, "zone", "zone", problem)
    ttl = _int(p, doc, "ttl", "", 3600, 0, MAX_TTL)
    ns_records, ns_names = _parse_nameservers(p, doc, apex, ttl)
    soa = _parse_soa(p, doc, apex, ns_names)
    where: dict[str, tuple[Any, Any]] = {}
    records = ns_records + _parse_records(p, doc, apex, ttl, where)

    services: list[Service] = []
    service_where: dict[str, tuple[Any, Any]] = {}
    raw = _mapping(p, doc, "services", doc.get("services"), "services")
    for name, value in raw.items():
        path = _join("services", name)
        full_name = absolute_name(str(name), apex)
        problem = check_name(full_name) or (
            None if in_zone(full_name, apex) else f"{full_name} is outside {apex}"
        )
        if problem:
            p.add(raw, name, path, problem)
            continue
        services.append(_parse_service(p, raw, name, full_name, value, path))
        service_where[full_name] = (raw, name)
    _check_conflicts(p, records, service_where, where)
    _check_cname_loops(p, records, where)
    p.raise_if_any()
    return Zone(apex=apex, soa=soa, records=tuple(records), services=tuple(services), source=source)


def _load_yaml(text: str, loader_class: Any) -> tuple[Any, list[tuple[int, Any]]]:
    """The document and its duplicate keys (what ``yaml.load`` does, keeping the loader)."""
    loader = loader_class(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()


def load_zone_text(text: str, source: str = "") -> Zone:
    """A zone from zone-file text."""
    try:
        try:
            doc, duplicates = _load_yaml(text, _FastLineLoader)
        except yaml.YAMLError:
            doc, duplicates = _load_yaml(text, _LineLoader)  # raises, with a better message
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{source}{line}: invalid YAML: {reason}"]) from None
    problems = [f"{source}:{line}: duplicate key {key!r}" for line, key in duplicates]
    try:
        zone = parse_zone(doc, source)
    except ConfigError as exc:
        raise ConfigError([*problems, *exc.problems]) from None
    if problems:
        raise ConfigError(problems)
    return zone


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """The outcome of re-reading the zone files: applied, or refused with every problem."""

    zones: tuple[str, ...] = ()  # the apexes now served (when applied)
    problems: tuple[str, ...] = ()  # ``file:line: field: message``; any: nothing changed

    @property
    def applied(self) -> bool:
        return not self.problems


def load_zones(directory: Path) -> list[Zone]:
    """Every ``*.yaml``/``*.yml`` zone file in ``directory``; ConfigError lists all problems."""
    problems: list[str] = []
    zones: list[Zone] = []
    if not directory.is_dir():
        raise ConfigError([f"{directory}: not a directory"])
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not files:
        raise ConfigError([f"{directory}: no zone files (*.yaml)"])
    apexes: dict[str, str] = {}
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
            zone = load_zone_text(text, str(path))
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: cannot read: {exc}")
            continue
        if zone.apex in apexes:
            problems.append(f"{path}: zone {zone.apex} is already defined in {apexes[zone.apex]}")
            continue
        apexes[zone.apex] = str(path)
        zones.append(zone)
    if problems:
        raise ConfigError(problems)
    return zones

