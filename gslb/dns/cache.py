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

A hit is counted on its entry (one integer increment); each entry carries the
``Tally`` its replies count as (type, rcode, endpoints: see ``gslb.dns.stats``), and
``fold()`` sums the hits of the entries touched since the last fold by tally.

A UDP query whose bytes after the ID were seen before, spelled the same, is found
by those bytes alone (one slice and one dictionary lookup: what repeats in practice),
or with the resolver's host when its answer depends on the resolver.
Otherwise lookup reads only the header and takes the question name to end at the
first zero byte (where a plain name ends; for an unusual one the key then merely
lower-cases less, and such entries are never patched). A message that is not a plain
one-question query is a miss and goes to the full parser, which alone decides what
may be stored.
"""

from __future__ import annotations

import functools
from collections import Counter
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import TYPE_CHECKING, Any

from gslb.engine.answer import Answer
from gslb.model import IPAddress, RType
from gslb.snapshot import Snapshot

if TYPE_CHECKING:
    from gslb.dns.stats import Tally

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

class _Entry:
    """A reply as first packed, the question name it was packed for, whether another
    spelling of that name may be patched in, and what its hits count as."""

    __slots__ = ("tail", "patchable", "tally", "hits")

    def __init__(self, reply: bytes, patchable: bool, tally: Tally) -> None:
        # all but the ID: a hit puts the query's ID in front; the question name as
        # spelled when it was packed is in it, after the header's remaining 10 bytes
        self.tail = reply[2:]
        self.patchable = patchable
        self.tally = tally
        self.hits = 0  # since the last fold


class ResponseCache:
    """Packed replies for the current snapshot, at most ``capacity`` entries."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._entries: dict[Any, _Entry | _PerSource] = {}
        # UDP replies by the query's exact bytes after its ID: those that depend on
        # nothing but the query, and (keyed with the resolver's host) those that depend
        # on the resolver's subnet too, as queries without ECS do
        self._exact: dict[bytes | tuple[bytes, str], _Entry] = {}
        self._snapshot: Snapshot | None = None
        self._touched: list[_Entry] = []  # entries hit since the last fold
        self._folded: Counter[Tally] = Counter()  # hits of entries touched before it
        self._hits = 0  # as of the last fold
        self.misses = 0
        # The last miss's query, key and framed name, until store() takes them
        self._missed: tuple[bytes, bytes, bytes] | None = None

    def __len__(self) -> int:
        return max(len(self._entries), len(self._exact))

    @property
    def hits(self) -> int:
        """Replies served from the cache so far."""
        self._fold()
        return self._hits

    def fold(self) -> Counter[Tally]:
        """Every hit so far, by the tally of the entry that served it."""
        self._fold()
        return Counter(self._folded)

    def _fold(self) -> None:
        folded = self._folded
        for entry in self._touched:
            folded[entry.tally] += entry.hits
            self._hits += entry.hits
            entry.hits = 0
        self._touched.clear()

    def _hit(self, entry: _Entry) -> None:
        if not entry.hits:
            touched = self._touched
            if len(touched) >= self.capacity:  # nobody folds: keep the list bounded
                self._fold()
            touched.append(entry)
        entry.hits += 1

    def lookup(self, data: bytes, source: Any, tcp: bool, snapshot: Snapshot) -> bytes | None:
        """The reply to ``data`` from the cache, or ``None`` on a miss."""
        if snapshot is self._snapshot and not tcp:
            after_id = data[2:]
            exact = self._exact.get(after_id)
            if exact is None and isinstance(source, tuple):
                exact = self._exact.get((after_id, source[0]))
            if exact is not None:
                if exact.hits:
                    exact.hits += 1
                else:
                    self._hit(exact)
                return data[:2] + exact.tail
        if snapshot is not self._snapshot:
            self._entries.clear()
            self._exact.clear()
            self._snapshot = snapshot
            self.misses += 1
            return None
        # The header and the name's framing (see _name_end), inline: this runs for
        # every query the exact bytes do not find.
        if (len(data) < 17 or data[2] & 0xF8 or not data.startswith(_PLAIN_COUNTS, 4)
                or data[11] > 1):
            self.misses += 1
            return None
        end = data.find(0, 12) + 1
        if end <= 12:
            self.misses += 1
            return None
        name = data[12:end]
        head = bytes((data[2] | _TCP_MARK, data[3])) if tcp else data[2:4]
        key = head + name.lower() + data[end:]
        entry = self._entries.get(key)
        if entry is _PER_SOURCE:
            entry = self._entries.get((key, _source_bucket(source)[0]))
        if entry is None:
            self.misses += 1
            self._missed = (data, key, name)  # for store(), which the full path calls next
            return None
        assert isinstance(entry, _Entry)
        if entry.tail.startswith(name, 10):
            self._hit(entry)
            return data[:2] + entry.tail
        if entry.patchable:
            self._hit(entry)
            return data[:2] + entry.tail[:10] + name + entry.tail[end - 2 :]
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
        tally: Tally,
    ) -> None:
        """Keep ``reply``, the full path's reply to ``data`` from ``snapshot``, if it may
        be; its hits will count as ``tally``."""
        if snapshot is not self._snapshot or result.per_query or not self.capacity:
            return
        missed = self._missed
        key: Any
        if missed is not None and missed[0] is data:
            _, key, name = missed  # what lookup() built for this query
        else:
            end = _name_end(data)
            if end is None:
                return
            name = data[12:end]
            head = bytes((data[2] | _TCP_MARK, data[3])) if tcp else data[2:4]
            key = head + name.lower() + data[end:]
        self._missed = None
        entries = self._entries
        if len(entries) >= self.capacity or len(self._exact) >= self.capacity:
            entries.clear()  # cheap and rare: hot entries come back at their next query
            self._exact.clear()
        # The reply's bytes after the question do not depend on the question's letter
        # case when every record is an address owned by the question name itself (those
        # owners compress to the question); other names may compress against it.
        # A service's own answer is such (the engine's selection for the question name).
        # And the reply must repeat the name where the key framed it (not so when the
        # query's name was compressed, or held a zero byte).
        patchable = reply.startswith(name, 12) and (result.service == qname or (
            not result.authority and not result.additional and all(
                record.name == qname and record.rtype in _ADDRESS_TYPES for record in result.answer
            )
        ))
        entry = _Entry(reply, patchable, tally)
        if result.source_scope is None:
            entries[key] = entry
            if not tcp:
                self._exact[data[2:]] = entry
            return
        bucket, prefix = _source_bucket(source)
        if result.source_scope > prefix:
            return  # the answer depends on more of the resolver than its subnet
        entries[key] = _PER_SOURCE
        entries[(key, bucket)] = entry
        if not tcp and isinstance(source, tuple):
            self._exact[(data[2:], source[0])] = entry


def _name_end(data: bytes) -> int | None:
    """For a plain one-question query, the offset after its first zero byte from the
    question on: after the question name when that is uncompressed and holds no zero
    byte (what resolvers send); keys lower-case the bytes up to it. Else None."""
    if len(data) < 17 or data[2] & 0xF8 or not data.startswith(_PLAIN_COUNTS, 4) or data[11] > 1:
        return None
    end = data.find(0, 12) + 1
    return end if end > 12 else None


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
