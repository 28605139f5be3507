"""The response cache: packed replies keyed by what they depend on, for the hot path.

A query's key is its bytes after the ID, with the question name lower-cased and the
transport marked: that is everything the parser, the engine and the packer read
from the query (flags, question, the OPT record with its Client Subnet option and
UDP size). When the answer also depended on the resolver's own address (no ECS,
or an unusable one), the entry is kept per resolver subnet (/24, /56), and only when
the answer depended on no more of the address than that. Answers that draw on the
query's ID (``weighted``, ``round_robin``) are never kept.

Entries hold for one snapshot: the first query that sees a new snapshot empties the
cache, so a change is visible in the very next answer. On a hit only the ID is
patched, and the question's letter case when the reply's layout cannot depend on it.

A UDP query whose bytes after the ID were seen before, spelled the same, is found
by those bytes alone (one slice and one dictionary lookup: what repeats in practice).
Otherwise lookup parses only the header and the question name's framing; anything
unusual (a message that is not a plain one-question query, a name with compression)
is a miss and goes to the full parser, which alone decides what may be stored.
"""

from __future__ import annotations

import functools
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from gslb.engine.answer import Answer
from gslb.model import IPAddress, RType
from gslb.snapshot import Snapshot

DEFAULT_CAPACITY = 65_536  # entries; about 30 MB at most with typical replies
SOURCE_PREFIX_V4 = 24  # resolver subnets that share entries
SOURCE_PREFIX_V6 = 56

# QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT's high byte 0
_PLAIN_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00"
_TCP_MARK = 0x80  # the QR bit, never set in a query that gets an answer: keeps TCP keys apart
_ADDRESS_TYPES = (RType.A, RType.AAAA)


class _PerSource:
    """Stands for "look up (key, resolver subnet)": the answer depended on the resolver."""


_PER_SOURCE = _PerSource()

# An entry: the reply as first packed, the question name it was packed for, and
# whether another spelling of that name may be patched in.
_Entry = tuple[bytes, bytes, bool]


class ResponseCache:
    """Packed replies for the current snapshot, at most ``capacity`` entries."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._entries: dict[Any, _Entry | _PerSource] = {}
        # UDP replies that depend on nothing but the query, minus their ID, by the
        # query's exact bytes after its ID
        self._exact: dict[bytes, bytes] = {}
        self._snapshot: Snapshot | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return max(len(self._entries), len(self._exact))

    def lookup(self, data: bytes, source: Any, tcp: bool, snapshot: Snapshot) -> bytes | None:
        """The reply to ``data`` from the cache, or ``None`` on a miss."""
        if snapshot is self._snapshot and not tcp:
            tail = self._exact.get(data[2:])
            if tail is not None:
                self.hits += 1
                return data[:2] + tail
        if snapshot is not self._snapshot:
            self._entries.clear()
            self._exact.clear()
            self._snapshot = snapshot
            self.misses += 1
            return None
        # The header and the name's framing, inline: this runs for every query.
        size = len(data)
        if size < 17 or data[2] & 0xF8 or data[4:11] != _PLAIN_COUNTS or data[11] > 1:
            self.misses += 1
            return None
        end = 12
        while True:
            if end >= size:
                self.misses += 1
                return None
            length = data[end]
            if not length:
                break
            if length > 63:
                self.misses += 1
                return None
            end += length + 1
        end += 1
        name = data[12:end]
        head = bytes((data[2] | _TCP_MARK, data[3])) if tcp else data[2:4]
        key = head + name.lower() + data[end:]
        entry = self._entries.get(key)
        if entry is _PER_SOURCE:
            entry = self._entries.get((key, _source_bucket(source)[0]))
        if entry is None:
            self.misses += 1
            return None
        reply, spelled, patchable = entry  # type: ignore[misc]
        if name == spelled:
            self.hits += 1
            return data[:2] + reply[2:]
        if patchable:
            self.hits += 1
            return data[:2] + reply[2:12] + name + reply[end:]
        self.misses += 1
        return None

    def store(
        self,
        data: bytes,
        source: Any,
        tcp: bool,
        snapshot: Snapshot,
        qname: str,
        result: Answer,
        reply: bytes,
    ) -> None:
        """Keep ``reply``, the full path's reply to ``data`` from ``snapshot``, if it may be."""
        if snapshot is not self._snapshot or result.per_query or not self.capacity:
            return
        end = _name_end(data)
        if end is None:
            return
        name = data[12:end]
        head = bytes((data[2] | _TCP_MARK, data[3])) if tcp else data[2:4]
        key: Any = head + name.lower() + data[end:]
        entries = self._entries
        if len(entries) >= self.capacity or len(self._exact) >= self.capacity:
            entries.clear()  # cheap and rare: hot entries come back at their next query
            self._exact.clear()
        # The reply's bytes after the question do not depend on the question's letter
        # case when every record is an address owned by the question name itself (those
        # owners compress to the question); other names may compress against it.
        patchable = not result.authority and not result.additional and all(
            record.name == qname and record.rtype in _ADDRESS_TYPES for record in result.answer
        )
        entry = (reply, name, patchable)
        if result.source_scope is None:
            entries[key] = entry
            if not tcp:
                self._exact[data[2:]] = reply[2:]
            return
        bucket, prefix = _source_bucket(source)
        if result.source_scope > prefix:
            return  # the answer depends on more of the resolver than its subnet
        entries[key] = _PER_SOURCE
        entries[(key, bucket)] = entry


def _name_end(data: bytes) -> int | None:
    """The offset after the question name of a plain one-question query, else None."""
    size = len(data)
    if size < 17 or data[2] & 0xF8 or data[4:11] != _PLAIN_COUNTS or data[11] > 1:
        return None
    end = 12
    while end < size:
        length = data[end]
        if not length:
            return end + 1
        if length > 63:
            return None
        end += length + 1
    return None


def _source_bucket(source: Any) -> tuple[int, int]:
    """The resolver's subnet as a dictionary key, and its prefix length."""
    if isinstance(source, IPv4Address | IPv6Address):
        return _bucket_of(source)
    return _bucket_of_host(source[0])


@functools.lru_cache(maxsize=65_536)
def _bucket_of_host(host: str) -> tuple[int, int]:
    address = ip_address(host.partition("%")[0])
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket's IPv4 client
    return _bucket_of(address)


def _bucket_of(address: IPAddress) -> tuple[int, int]:
    if isinstance(address, IPv4Address):
        return int(address) >> (32 - SOURCE_PREFIX_V4) << 1, SOURCE_PREFIX_V4
    return int(address) >> (128 - SOURCE_PREFIX_V6) << 1 | 1, SOURCE_PREFIX_V6
