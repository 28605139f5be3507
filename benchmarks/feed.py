"""What the snapshot feed of ``gslb serve --workers N`` costs, by configuration size.

    .venv/bin/python benchmarks/feed.py [--changes 20]

For 1, 100 and 1,000 services of 10 endpoints each (``benchmarks/scale.py``'s
configuration, the bundled GeoIP database), in this process: the registry's own cost
of one change (a registration: a new snapshot, the reference), and the cost of the
SNAPSHOT frame the control process sends, whole (what a starting worker gets) and
against the previous snapshot (what every change costs: only changed service views
travel): its size, the control process's CPU to pickle it, and a worker's CPU to
unpickle it (its DNS loop does nothing else meanwhile). CPU times are medians of
``--changes`` runs (``time.process_time``). Then with real worker processes
(``WorkerPool``, 2 workers): the time from a registration's new snapshot to every
worker answering from it (pickle, send, unpickle, acknowledge), median and max.
Bounded: ``--changes`` changes per size.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale import SIZES, zone_text  # noqa: E402

from gslb.config import load_zone_text  # noqa: E402
from gslb.geoip import GeoDatabase  # noqa: E402
from gslb.model import Endpoint  # noqa: E402
from gslb.registry import Registry  # noqa: E402
from gslb.snapshot import Snapshot  # noqa: E402
from gslb.workers import channel  # noqa: E402
from gslb.workers.pool import WorkerPool, WorkerSettings  # noqa: E402

GEOIP = ROOT / "data" / "gslb-geo.mmdb"
T = TypeVar("T")


def timed(function: Callable[..., T], *args: Any) -> tuple[T, float]:
    """``function(*args)`` and the CPU milliseconds it took."""
    start = time.process_time()
    result = function(*args)
    return result, (time.process_time() - start) * 1e3


def one_size(services: int, changes: int) -> str:
    registry = Registry()
    registry.load_zones([load_zone_text(zone_text(services), "scale.yaml")])
    registry.set_locator(GeoDatabase.open(GEOIP))
    publish, full_out, full_in, delta_out, delta_in = [], [], [], [], []
    full_size = delta_size = 0
    held = channel.load_snapshot(channel.dump_snapshot(registry.snapshot, 0)[5:], Snapshot())[1]
    for n in range(changes):
        before = registry.snapshot
        endpoint = Endpoint(IPv4Address(0x0AFF0000 + n))
        publish.append(timed(registry.register, f"s{n % services}.scale.example", "eu", endpoint)[1])
        after = registry.snapshot
        full, ms = timed(channel.dump_snapshot, after, 1)
        full_out.append(ms)
        delta, ms = timed(channel.dump_snapshot, after, 1, before)
        delta_out.append(ms)
        full_in.append(timed(channel.load_snapshot, full[5:], Snapshot())[1])
        (_, held), ms = timed(channel.load_snapshot, delta[5:], held)
        delta_in.append(ms)
        full_size, delta_size = len(full), len(delta)
    reach = asyncio.run(end_to_end(registry, services, changes))
    med = statistics.median
    return (f"| {services:,} | {med(publish):.2f} | {full_size / 1024:,.0f} | {med(full_out):.1f} | "
            f"{med(full_in):.1f} | {delta_size / 1024:,.1f} | {med(delta_out):.2f} | "
            f"{med(delta_in):.2f} | {med(reach):.1f} | {max(reach):.1f} |")


async def end_to_end(registry: Registry, services: int, changes: int) -> list[float]:
    pool = WorkerPool(WorkerSettings(2, geoip=GEOIP, log_level="warning"), lambda: registry.snapshot)
    registry.on_change(pool.notify)
    await pool.start("127.0.0.1", 0)
    try:
        times = []
        for n in range(changes):
            registry.register(f"s{n % services}.scale.example", "us",
                              Endpoint(IPv4Address(0x0BFF0000 + n)))
            start = time.perf_counter()  # published: from here on it is the feed's time
            if not await pool.settled(timeout=10):
                raise RuntimeError("the workers did not apply a change within 10 s")
            times.append((time.perf_counter() - start) * 1e3)
            await asyncio.sleep(0.05)
        return times
    finally:
        await pool.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=20, help="changes per size (20)")
    args = parser.parse_args()
    print("| services | one change (registry), ms CPU | whole frame, KiB | pickle, ms CPU "
          "| unpickle, ms CPU | frame of a change, KiB | pickle, ms CPU | unpickle, ms CPU "
          "| published to both workers answering, ms (median) | max ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in SIZES:
        print(one_size(size, args.changes), flush=True)


if __name__ == "__main__":
    main()
