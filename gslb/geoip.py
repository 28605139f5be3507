"""Where a client is: lookups in a MaxMind GeoIP2/GeoLite2 City or Country database.

``GeoDatabase.open(path)`` opens a database and proves that it answers (probe
lookups) before anyone uses it; ``locate(address)`` gives a ``GeoInfo`` from a
bounded cache and never raises. ``GeoSource`` holds the database in use for a path
and swaps in a new one on ``reload()`` only when it opens and answers, so a bad file
never replaces a good one.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import maxminddb

from gslb.errors import GslbError
from gslb.model import GeoInfo, IPAddress, Location

log = logging.getLogger(__name__)

BUNDLED_DATABASE = Path(__file__).resolve().parent.parent / "data" / "gslb-geo.mmdb"
CACHE_SIZE = 65_536
# Addresses share a cache entry by the widest of these networks that their database
# network holds (a /8 of unallocated space is one entry, not 65,536 /24s); networks
# narrower than the last are cached per address.
IPV4_LEVELS: tuple[int, ...] = (8, 16, 24)
IPV6_LEVELS: tuple[int, ...] = (16, 32, 48, 56)

_SCHEMAS = ("City", "Country", "Enterprise")  # database_type words of the GeoIP2 layout
_METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_METADATA_MAX = 128 * 1024  # the metadata section is within the file's last 128 KiB
_PROBE_NETWORKS = 16
_PROBE_ADDRESSES = tuple(
    ip_address(text)
    for text in (
        "1.1.1.1", "8.8.8.8", "41.0.0.1", "81.2.69.142", "89.160.20.112", "127.0.1.1",
        "175.16.199.1", "192.0.2.1", "200.0.0.1", "216.160.83.56",
        "2001:218::1", "2001:db8::1", "2a02:cf40::1", "2c0f:f248::1",
    )
)  # fmt: skip
# What a damaged data section raises in maxminddb (C extension or pure Python).
_DATA_ERRORS = (maxminddb.InvalidDatabaseError, ValueError, LookupError, TypeError)

_Signature = tuple[int, int, int, int]


class GeoIPError(GslbError):
    """The GeoIP database cannot be used."""


_NOT_FOUND = tuple(GeoInfo(None, None, None, prefix, False) for prefix in range(129))


class GeoDatabase:
    """An open MaxMind database that has answered probe lookups. Make one with ``open``."""

    def __init__(self, reader: maxminddb.Reader, path: Path, cache_size: int = CACHE_SIZE) -> None:
        metadata = reader.metadata()
        self._reader = reader
        self._path = path
        self._database_type: str = metadata.database_type
        self._build_epoch: int = metadata.build_epoch
        self._ip_version: int = metadata.ip_version
        self._cache_size = cache_size
        # per family, per level: (bits to shift an address by, {network: info})
        self._by_network: tuple[list[tuple[int, dict[int, GeoInfo]]], ...] = tuple(
            [(bits - level, {}) for level in levels]
            for bits, levels in ((32, IPV4_LEVELS), (128, IPV6_LEVELS))
        )
        self._by_address: dict[int, GeoInfo] = {}  # key: address << 1 | is IPv6
        self._failing = False

    @classmethod
    def open(cls, path: Path, cache_size: int = CACHE_SIZE) -> GeoDatabase:
        """Opens and probes ``path``; raises GeoIPError with a one-line reason.

        ``cache_size`` bounds the lookup cache (entries); 0 turns it off.
        """
        reader = _open_reader(path)
        try:
            database = cls(reader, path, cache_size)
            database._check_schema()
            database._probe()
        except GeoIPError:
            reader.close()
            raise
        return database

    @property
    def path(self) -> Path:
        return self._path

    @property
    def database_type(self) -> str:
        """As the file's metadata says, e.g. ``GeoLite2-City`` or ``GSLB-City``."""
        return self._database_type

    @property
    def build_epoch(self) -> int:
        """When the database was built, in seconds since 1970 (UTC)."""
        return self._build_epoch

    @property
    def built(self) -> datetime:
        return datetime.fromtimestamp(self._build_epoch, UTC)

    @property
    def ip_version(self) -> int:
        """6 when the database holds both families, 4 for an IPv4-only database."""
        return self._ip_version

    @property
    def cache_size(self) -> int:
        return self._cache_size

    @property
    def cache_entries(self) -> int:
        return sum(len(found) for levels in self._by_network for _, found in levels) + len(self._by_address)

    def __str__(self) -> str:
        return f"{self._path} ({self._database_type}, built {self.built:%Y-%m-%d})"

    def __repr__(self) -> str:
        return f"<GeoDatabase {self}>"

    def close(self) -> None:
        """Releases the file. Only for when nothing can call ``locate`` any more."""
        self._reader.close()
        self._clear()
        self._by_address.clear()

    def locate(self, address: IPAddress) -> GeoInfo:
        """Where ``address`` is. Never raises: a failing lookup gives a not-found answer."""
        ip = int(address)
        if isinstance(address, IPv4Address):
            family, bits = 0, 32
        elif ip >> 32 == 0xFFFF:  # IPv4-mapped, ::ffff:0:0/96
            as_ipv4 = self.locate(IPv4Address(ip & 0xFFFFFFFF))
            return replace(as_ipv4, prefix=as_ipv4.prefix + 96)
        else:
            family, bits = 1, 128
        levels = self._by_network[family]
        for shift, found in levels:
            cached = found.get(ip >> shift)
            if cached is not None:
                return cached
        address_key = ip << 1 | family
        cached = self._by_address.get(address_key)
        if cached is not None:
            return cached
        info = self._lookup(address)
        if self._cache_size:
            if self.cache_entries >= self._cache_size:
                self._clear()
            for shift, found in levels:  # the widest level inside the database network
                if bits - shift >= info.prefix:
                    found[ip >> shift] = info
                    break
            else:
                self._by_address[address_key] = info
        return info

    def _clear(self) -> None:
        for levels in self._by_network:
            for _, found in levels:
                found.clear()
        self._by_address.clear()

    def _lookup(self, address: IPAddress) -> GeoInfo:
        if self._ip_version == 4 and isinstance(address, IPv6Address):
            return _NOT_FOUND[0]  # no IPv6 at all in this database
        try:
            record, prefix = self._reader.get_with_prefix_len(address)
        except _DATA_ERRORS as err:
            if not self._failing:
                self._failing = True
                log.warning("%s: lookups fail, answering 'not found' (logged once): %s", self._path, err)
            return _NOT_FOUND[address.max_prefixlen]
        if isinstance(address, IPv4Address) and prefix > 32:
            prefix -= 96  # an IPv6 tree counted from ::/0; maxminddb >= 2 already does this
        if not isinstance(record, dict):
            return _NOT_FOUND[prefix]
        country = _code(record, "country", "iso_code") or _code(record, "registered_country", "iso_code")
        location = None
        place = record.get("location")
        if isinstance(place, dict):
            latitude, longitude = place.get("latitude"), place.get("longitude")
            if isinstance(latitude, int | float) and isinstance(longitude, int | float):
                location = Location(float(latitude), float(longitude))
        return GeoInfo(country, _code(record, "continent", "code"), location, prefix, True)

    def _check_schema(self) -> None:
        if not any(word in self._database_type for word in _SCHEMAS):
            raise GeoIPError(
                f"{self._path}: is a {self._database_type} database; need a City or Country database"
            )

    def _probe(self) -> None:
        """Looks up the first networks of the tree and a spread of well-known addresses.

        A file whose data section is damaged opens fine and fails here instead of on
        the DNS path.
        """
        try:
            for network, record in itertools.islice(self._reader, _PROBE_NETWORKS):
                if not isinstance(record, dict):
                    raise GeoIPError(f"{self._path}: records are not maps; not a GeoIP2 layout")
                self._reader.get_with_prefix_len(network.network_address)
            for address in _PROBE_ADDRESSES:
                if address.version <= self._ip_version:
                    self._reader.get_with_prefix_len(address)
        except _DATA_ERRORS as err:
            raise GeoIPError(f"{self._path}: lookups fail, the data section is damaged: {err}") from err


class GeoSource:
    """The GeoIP database in use for one path, replaced by ``reload`` only with a good one."""

    def __init__(self, database: GeoDatabase, signature: _Signature | None = None) -> None:
        self._database = database
        self._signature = signature if signature is not None else _signature(database.path)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, cache_size: int = CACHE_SIZE) -> GeoSource:
        """Opens ``path`` (see ``GeoDatabase.open``); raises GeoIPError."""
        signature = _signature(path)
        return cls(GeoDatabase.open(path, cache_size), signature)

    @property
    def database(self) -> GeoDatabase:
        return self._database

    @property
    def path(self) -> Path:
        return self._database.path

    def locate(self, address: IPAddress) -> GeoInfo:
        return self._database.locate(address)

    def changed(self) -> bool:
        """The file differs (mtime, size or inode) from the one last loaded or tried."""
        return _signature(self.path) != self._signature

    def reload(self) -> bool:
        """Opens the file again; on failure keeps the database in use and logs why."""
        with self._lock:
            path = self.path
            self._signature = _signature(path)
            try:
                database = GeoDatabase.open(path, self._database.cache_size)
            except GeoIPError as err:
                log.warning("GeoIP reload failed, still using %s: %s", self._database, err)
                return False
            # The old database is not closed: a lookup may still be running on it.
            self._database = database
        return True  # the caller says what is now in use (str(source.database))


def _code(record: dict[str, object], key: str, field: str) -> str | None:
    part = record.get(key)
    if isinstance(part, dict):
        code = part.get(field)
        if isinstance(code, str):
            return code
    return None


def _signature(path: Path) -> _Signature | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _open_reader(path: Path) -> maxminddb.Reader:
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise GeoIPError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise GeoIPError(f"{path}: is a directory, not a MaxMind DB file") from err
    except OSError as err:
        raise GeoIPError(f"{path}: cannot read: {err.strerror or err}") from err
    if _METADATA_MARKER not in data[-_METADATA_MAX:]:
        raise GeoIPError(f"{path}: not a MaxMind DB file (no metadata section)")
    try:
        return _open_private_copy(data, path)
    except maxminddb.InvalidDatabaseError as err:
        raise GeoIPError(f"{path}: corrupt MaxMind DB: the reader refuses to open it") from err


def _open_private_copy(data: bytes, path: Path) -> maxminddb.Reader:
    """Opens a copy of the file that nobody else can touch.

    The reader memory-maps its file: were it the original, overwriting that in place
    (``cp new.mmdb data/...``) would crash the process with SIGBUS. On Linux the copy
    is an anonymous memory file. Elsewhere the file itself is opened: replace it by
    renaming a new file over it (as ``geoipupdate`` and ``gslb.geodb`` do).
    """
    if sys.platform == "linux":
        fd = os.memfd_create("gslb-geoip", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as copy:
                copy.write(data)
            return maxminddb.open_database(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    return maxminddb.open_database(path)
