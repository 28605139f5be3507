"""What the control process and a DNS worker say to each other over their socket pair.

Every message is one frame: a kind byte, a 4-byte length, then the payload. A frame
is acted on only once it has arrived whole, so a worker never sees half a snapshot.

    control -> worker   SNAPSHOT  (GeoIP epoch, base generation, pickled snapshot)
                        STATS     request number: "send me your DNS counters"
    worker -> control   READY     serving on its sockets
                        APPLIED   generation now answered from
                        STATS     request number + pickled DnsStats (counters only)
                        ERROR     why the worker could not start (one line)

Snapshots travel without what belongs to a process: the GeoIP locator (each worker
opens the database itself; the epoch tells it when the control process reloaded it)
and the engine's memo on each service view (filled by each process as queries come).
A snapshot is sent against the one the worker holds: a service view that did not
change travels as its name, and the worker keeps its own (memo and hash rings warm).
The pickles are trusted: both ends are this program, on a socket pair nobody else holds.
"""

from __future__ import annotations

import asyncio
import copyreg
import enum
import io
import pickle
import struct
from typing import Any

from gslb.model import Zone
from gslb.snapshot import Locator, ServiceView, Snapshot

HEADER = struct.Struct("!BI")
MAX_FRAME = 1 << 31  # a snapshot of a very large configuration still fits


class Kind(enum.IntEnum):
    SNAPSHOT = 1
    STATS = 2
    READY = 3
    APPLIED = 4
    ERROR = 5


def frame(kind: Kind, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[Kind, bytes]:
    """The next whole frame; raises asyncio.IncompleteReadError when the peer is gone."""
    kind, length = HEADER.unpack(await reader.readexactly(HEADER.size))
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes")
    return Kind(kind), await reader.readexactly(length)


def _reduce_view(view: ServiceView) -> tuple[Any, ...]:
    return ServiceView, (view.service, view.endpoints, view.last_good)  # the memo stays behind


def _reduce_snapshot(snapshot: Snapshot) -> tuple[Any, ...]:
    return Snapshot, (snapshot.generation, snapshot.zones, None)  # so does the locator


_TABLE = copyreg.dispatch_table.copy()
_TABLE[ServiceView] = _reduce_view
_TABLE[Snapshot] = _reduce_snapshot


class _Pickler(pickle.Pickler):
    """Pickles a snapshot; a service view (or a zone's configuration) equal to the one
    of the same name in ``base`` (the snapshot the worker holds) is sent as its name,
    and the worker keeps its own object for it, with the memo its queries have filled."""

    def __init__(self, file: io.BytesIO, base: Snapshot | None) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.dispatch_table = _TABLE
        zones = base.zones.values() if base is not None else ()
        self._views = {name: view for zone in zones for name, view in zone.services.items()}
        self._zones = {zone.apex: zone.zone for zone in zones}

    def persistent_id(self, obj: Any) -> tuple[str, str] | None:
        kind = type(obj)
        if kind is ServiceView:
            kept: Any = self._views.get(obj.service.name)
            if kept is not None and (kept is obj or kept == obj):
                return "service", obj.service.name
        elif kind is Zone:  # a zone's configuration: the same until a reload changes it
            kept = self._zones.get(obj.apex)
            if kept is not None and (kept is obj or kept == obj):
                return "zone", obj.apex
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, base: Snapshot) -> None:
        super().__init__(file)
        self._base = base

    def persistent_load(self, pid: Any) -> ServiceView | Zone:
        kind, name = pid
        found: ServiceView | Zone | None = None
        if kind == "service":
            found = self._base.service(name)
        elif kind == "zone" and name in self._base.zones:
            found = self._base.zones[name].zone
        if found is None:
            raise pickle.UnpicklingError(f"no {kind} {name!r} in generation {self._base.generation}")
        return found


def dump_snapshot(snapshot: Snapshot, geo_epoch: int, base: Snapshot | None = None) -> bytes:
    """The SNAPSHOT frame for ``snapshot``: whole, or against ``base``, the snapshot the
    receiving worker holds (unchanged service views travel as their names)."""
    buffer = io.BytesIO()
    buffer.write(b"\0" * HEADER.size)
    pickler = _Pickler(buffer, base)
    pickler.dump((geo_epoch, -1 if base is None else base.generation))
    pickler.dump(snapshot)
    data = buffer.getbuffer()
    HEADER.pack_into(data, 0, Kind.SNAPSHOT, len(data) - HEADER.size)
    return bytes(data)


def load_snapshot(payload: bytes, current: Snapshot) -> tuple[int, Snapshot]:
    """(GeoIP epoch, snapshot without a locator) from a SNAPSHOT frame's payload, taking
    unchanged service views from ``current``. Raises ValueError when the frame was made
    against another snapshot than ``current``."""
    unpickler = _Unpickler(io.BytesIO(payload), current)
    epoch, base = unpickler.load()
    if base not in (-1, current.generation):
        raise ValueError(f"a snapshot against generation {base}, not {current.generation}")
    snapshot = unpickler.load()
    if not isinstance(snapshot, Snapshot) or not isinstance(epoch, int):
        raise TypeError("a SNAPSHOT frame holds no snapshot")
    return epoch, snapshot


def with_locator(snapshot: Snapshot, locator: Locator | None) -> Snapshot:
    return Snapshot(snapshot.generation, snapshot.zones, locator)
