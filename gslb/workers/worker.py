"""A DNS worker process of ``gslb serve --workers N``: answers DNS, and nothing else.

Started by the control process (``gslb.workers.pool``) as
``python -m gslb.workers.worker --channel FD --udp FD --tcp FD ...`` with its share of
the SO_REUSEPORT sockets and one end of a socket pair. It opens the GeoIP database
itself, keeps its own response cache and rate limiter, and answers from the latest
snapshot the control process sent (``gslb.workers.channel``), swapped in only once it
has arrived whole. It exits when the control process goes away (the socket pair
closes, even after ``kill -9``) or on SIGTERM; SIGINT is the control process's to
handle (Ctrl-C reaches the whole process group).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import pickle
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gslb import logs
from gslb.dns.querylog import QueryLog
from gslb.dns.rrl import ResponseRateLimiter
from gslb.dns.server import DnsServer
from gslb.dns.stats import counters_of
from gslb.geoip import GeoSource
from gslb.snapshot import Snapshot
from gslb.workers import channel
from gslb.workers.channel import Kind

log = logging.getLogger("gslb.worker")


class Worker:
    """The DNS server of one worker process, fed snapshots over ``reader``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.snapshot = Snapshot()
        self.geo: GeoSource | None = None
        self.geo_epoch = -1
        rrl = ResponseRateLimiter(args.rrl_rate, args.rrl_slip) if args.rrl_rate > 0 else None
        query_log = QueryLog(args.query_log) if args.query_log > 0 else None
        self.server = DnsServer(
            lambda: self.snapshot, rrl=rrl, query_log=query_log, udp_batch=args.udp_batch
        )

    def apply(self, payload: bytes) -> None:
        epoch, snapshot = channel.load_snapshot(payload, self.snapshot)
        if self.args.geoip is not None:
            if self.geo is None:
                self.geo = GeoSource.open(Path(self.args.geoip))
            elif epoch != self.geo_epoch and self.geo.reload():  # the control process reloaded it
                log.info("worker %d: geoip reloaded: %s", self.args.index, self.geo.database)
        self.geo_epoch = epoch
        locator = self.geo.database if self.geo is not None else None
        self.snapshot = channel.with_locator(snapshot, locator)


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=args.channel))
    worker = Worker(args)
    try:
        kind, payload = await channel.read_frame(reader)
        if kind is not Kind.SNAPSHOT:
            raise RuntimeError(f"expected a snapshot first, got {kind.name}")
        worker.apply(payload)
        await worker.server.serve(socket.socket(fileno=args.udp), socket.socket(fileno=args.tcp))
    except asyncio.IncompleteReadError:
        return 1  # the control process went away before we were ready
    except Exception as exc:  # one line for the control process to report
        writer.write(channel.frame(Kind.ERROR, str(exc).encode()))
        with contextlib.suppress(OSError):
            await writer.drain()
        return 1
    writer.write(channel.frame(Kind.READY) + _applied(worker))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    feed = asyncio.create_task(_follow(worker, reader, writer))
    feed.add_done_callback(lambda _: stop.set())
    await stop.wait()
    feed.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await feed
    await worker.server.close()
    writer.close()
    return 0


async def _follow(worker: Worker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Apply snapshots and answer requests until the control process goes away."""
    while True:
        try:
            kind, payload = await channel.read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.debug("worker %d: the control process is gone", worker.args.index)
            return
        if kind is Kind.SNAPSHOT:
            try:
                worker.apply(payload)
            except Exception:
                # The next snapshot would come against one this worker does not hold:
                # exit, and the control process starts a worker that gets it whole.
                log.exception("worker %d: snapshot refused; exiting", worker.args.index)
                return
            writer.write(_applied(worker))
        elif kind is Kind.STATS:
            counters = pickle.dumps(counters_of(worker.server.stats), pickle.HIGHEST_PROTOCOL)
            writer.write(channel.frame(Kind.STATS, payload + counters))
        with contextlib.suppress(ConnectionError):
            await writer.drain()


def _applied(worker: Worker) -> bytes:
    return channel.frame(Kind.APPLIED, str(worker.snapshot.generation).encode())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gslb-worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--channel", type=int, required=True)
    parser.add_argument("--udp", type=int, required=True)
    parser.add_argument("--tcp", type=int, required=True)
    parser.add_argument("--geoip")
    parser.add_argument("--rrl-rate", type=float, default=0.0)
    parser.add_argument("--rrl-slip", type=int, default=2)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="text")
    parser.add_argument("--query-log", type=int, default=0)
    parser.add_argument("--udp-batch", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    # Ctrl-C and a terminal's hangup reach the whole process group: stopping and
    # reloading are the control process's to do
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    runner: Any
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # the stdlib loop works too, only slower
        runner = asyncio.run
    code: int = runner(run(args))
    return code


if __name__ == "__main__":
    sys.exit(main())
