"""Response rate limiting for UDP, in the manner of BIND and Knot DNS RRL.

A spoofed-source flood turns an authoritative server into a reflector aimed at the
forged address. RRL caps the identical responses one client network receives: each
network (IPv4 /24, IPv6 /56) has a token bucket per kind of response, refilled at
``rate`` responses per second and holding at most one second's worth. Over the limit a
response is dropped, except every ``slip``-th, which is sent truncated (TC=1, no
records): a real resolver retries over TCP, which cannot be spoofed, while a forged
victim receives only a small packet. ``slip`` 0 drops them all; 1 truncates them all.

Responses are told apart as BIND does: answers and NODATA by the question (name and
type), NXDOMAIN per network (whatever the name, so random names do not escape), and
errors (REFUSED, FORMERR, ...) per network. TCP is never limited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from gslb.model import IPAddress

log = logging.getLogger("gslb.dns")

DEFAULT_SLIP = 2  # BIND's default: half of the limited responses reach real resolvers as TC
DEFAULT_TABLE_SIZE = 100_000  # buckets kept; a bucket is ~200 bytes
REPORT_PERIOD = 10.0  # seconds between log lines while limiting

V4_PREFIX = 24
V6_PREFIX = 56

_NOERROR, _NXDOMAIN = 0, 3
_TC = 0x02  # in the header's third byte


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    limited: int = 0  # responses limited so far, for the slip count


class ResponseRateLimiter:
    """Decides, per UDP response, whether to send it, send it truncated, or drop it."""

    def __init__(
        self,
        rate: float,
        slip: int = DEFAULT_SLIP,
        *,
        table_size: int = DEFAULT_TABLE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if slip < 0:
            raise ValueError("slip must be 0 or more")
        self.rate = float(rate)
        self.slip = slip
        self.table_size = table_size
        self._clock = clock
        self._buckets: dict[tuple[bytes, bytes], _Bucket] = {}
        self.limited = 0  # responses dropped or truncated since start
        self.slipped = 0  # of which sent truncated
        self._reported = (0.0, 0)  # (when, self.limited then)

    def limit(self, reply: bytes, client: IPAddress) -> bytes | None:
        """``reply`` itself, a truncated copy of it, or ``None`` to send nothing."""
        now = self._clock()
        key = (_network(client), _kind(reply))
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.table_size:
                self._evict(now)
            bucket = self._buckets[key] = _Bucket(self.rate, now)
        else:
            bucket.tokens = min(self.rate, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return reply
        bucket.limited += 1
        self.limited += 1
        if now - self._reported[0] >= REPORT_PERIOD:
            log.warning(
                "rate limiting: %d response(s) limited (%d sent truncated) since start",
                self.limited, self.slipped,
            )
            self._reported = (now, self.limited)
        if self.slip and bucket.limited % self.slip == 0:
            self.slipped += 1
            return truncate(reply)
        return None

    def _evict(self, now: float) -> None:
        """Make room: forget full buckets (as good as new); failing that, the oldest eighth."""
        horizon = now - 1.0  # a bucket untouched for a second has refilled
        stale = [key for key, bucket in self._buckets.items() if bucket.stamp <= horizon]
        if len(stale) < self.table_size // 8:
            stale += list(self._buckets)[: self.table_size // 8]
        for key in stale:
            self._buckets.pop(key, None)


def _network(client: IPAddress) -> bytes:
    if isinstance(client, IPv4Address):
        return client.packed[: V4_PREFIX // 8]
    return client.packed[: V6_PREFIX // 8]


def _question_end(reply: bytes) -> int:
    """The offset after the question (our replies write it uncompressed), or 12."""
    if len(reply) < 12 or reply[4:6] == b"\0\0":
        return 12
    offset = 12
    while offset < len(reply) and reply[offset]:
        offset += 1 + reply[offset]
    return min(offset + 5, len(reply))  # the root label, then type and class


def _kind(reply: bytes) -> bytes:
    """What makes two responses the same for limiting (see the module docstring)."""
    rcode = reply[3] & 0xF if len(reply) > 3 else 0
    if rcode == _NOERROR:
        end = _question_end(reply)
        return reply[12 : end - 4].lower() + reply[end - 4 : end]  # the name, type and class
    if rcode == _NXDOMAIN:
        return b"nxdomain"
    return b"error"


def truncate(reply: bytes) -> bytes:
    """The reply with TC set and only its question: the slip that sends resolvers to TCP."""
    end = _question_end(reply)
    header = bytearray(reply[:12])
    header[2] |= _TC
    header[6:12] = b"\0" * 6
    return bytes(header) + reply[12:end]
