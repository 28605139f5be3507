"""Consistent hash ring with weighted virtual nodes (mmh3).

The same client subnet keeps landing on the same member while the member set is
unchanged, and adding or removing a member moves only that member's share.
Hashes are mmh3 with a fixed seed, never Python's ``hash()``, so every instance of
the GSLB builds the same ring and gives every client the same answer.
"""

from __future__ import annotations

import bisect
import functools
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import mmh3

VNODES_LIGHTEST = 1000  # points of the lightest member: shares within a few per cent
MAX_VNODES = 50 * VNODES_LIGHTEST  # weight ratios beyond 50:1 saturate


@dataclass(frozen=True, slots=True)
class Ring:
    # Arrays of machine integers, not tuples of ints: a ring has a thousand points per
    # member, and a thousand services' rings must fit in memory.
    points: Sequence[int]  # sorted hash points (array of 32-bit unsigned)
    owners: Sequence[int]  # owners[i]: index of the member that owns points[i]
    size: int  # number of members

    def pick(self, key: int, count: int) -> list[int]:
        """Up to ``count`` distinct member indices, walking clockwise from ``key``."""
        picked: list[int] = []
        for owner in self.walk(key):
            picked.append(owner)
            if len(picked) >= count:
                break
        return picked

    def walk(self, key: int) -> Iterator[int]:
        """Every member index once, in the order met walking clockwise from ``key``."""
        seen: set[int] = set()
        points = len(self.points)
        i = bisect.bisect_right(self.points, key)
        for step in range(points):
            owner = self.owners[(i + step) % points]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == self.size:
                    return


@functools.lru_cache(maxsize=4096)
def make_ring(members: tuple[tuple[str, float], ...]) -> Ring:
    """A ring for ``members``: (stable id, weight > 0) pairs, in any order.

    A member's virtual nodes depend on its own id and weight relative to the lightest
    member's, so adding or removing a member moves only the clients on its points
    (unless it changes which weight is lightest). Cached, since a service's healthy set
    changes far less often than it is queried.
    """
    if not members:
        return Ring(array("I"), array("H"), 0)
    lightest = min(weight for _, weight in members)
    pairs: list[tuple[int, int]] = []
    for index, (member_id, weight) in enumerate(members):
        vnodes = min(MAX_VNODES, max(1, round(VNODES_LIGHTEST * weight / lightest)))
        for v in range(vnodes):
            pairs.append((mmh3.hash(f"{member_id}#{v}", signed=False), index))
    pairs.sort()
    owner_type = "H" if len(members) <= 0xFFFF else "I"
    return Ring(array("I", [p for p, _ in pairs]), array(owner_type, [o for _, o in pairs]), len(members))


# The ring position of a client key (its subnet, packed). A partial, not a function:
# no Python frame per query.
hash_key: Callable[[bytes], int] = functools.partial(mmh3.hash, signed=False)


def spread(ring: Ring, keys: Sequence[int]) -> list[int]:
    """How many of ``keys`` land first on each member (for tests and explain output)."""
    counts = [0] * ring.size
    for key in keys:
        counts[ring.pick(key, 1)[0]] += 1
    return counts
