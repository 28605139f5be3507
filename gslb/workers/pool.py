"""The DNS worker processes of ``gslb serve --workers N``, seen from the control process.

The control process keeps the registry, the store, the API and the prober, and serves
no DNS itself: DNS load on the workers cannot starve health checks of CPU or of the
interpreter lock. It binds the DNS sockets once, one UDP and one TCP socket per worker
in a SO_REUSEPORT group (the kernel spreads queries over the group by their address
4-tuple), and hands each worker its pair. It keeps its own copy of every pair, so a
worker that dies leaves its sockets in the group: what the kernel sends them meanwhile
waits in their buffers, and the worker started in its place answers it. The group
never changes size, so no other flow moves between workers.

Every new snapshot is sent to every worker (``gslb.workers.channel``), against the one
the worker holds: only service views that changed travel whole. Sends coalesce: a
worker that is still receiving one snapshot gets the latest one next, not every one
made meanwhile. Each snapshot is pickled once for all the workers that hold the same
base (all of them, but a worker just started, which gets it whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gslb.dns.stats import DnsStats, summed
from gslb.errors import GslbError
from gslb.snapshot import Locator, Snapshot
from gslb.workers import channel
from gslb.workers.channel import Kind

log = logging.getLogger("gslb.workers")

READY_TIMEOUT = 30.0  # seconds for a worker to start: imports, GeoIP, the first snapshot
STOP_TIMEOUT = 5.0  # after SIGTERM, before SIGKILL
STATS_TIMEOUT = 1.0  # a worker too busy to send its counters is counted as last seen
SETTLE_TIMEOUT = 1.0  # longest an API write waits for the workers to answer from it
BIND_ATTEMPTS = 8
QUICK_DEATH = 5.0  # a worker that dies sooner than this is restarted after a pause
MAX_PAUSE = 10.0
REQUEST = struct.Struct("!I")


class WorkerError(GslbError):
    """A DNS worker could not be started."""


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerSettings:
    count: int
    geoip: Path | None = None
    rrl_rate: float = 0.0  # for the whole server: each worker limits to its share
    rrl_slip: int = 2
    log_level: str = "info"
    log_format: str = "text"
    query_log: int = 0  # each worker logs one of its queries in this many
    udp_batch: bool = True
    hang_timeout: float = 10.0  # a worker that takes no snapshot for this long is replaced


@dataclasses.dataclass(eq=False)
class _Slot:
    """One worker place: its sockets, and the process serving them now."""

    index: int
    udp: socket.socket
    tcp: socket.socket
    process: subprocess.Popen[bytes] | None = None
    writer: asyncio.StreamWriter | None = None
    listener: asyncio.Task[None] | None = None
    feeder: asyncio.Task[None] | None = None
    ready: asyncio.Future[None] | None = None
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    started: float = 0.0
    serving: bool = False
    sent: Snapshot | None = None  # the last snapshot written to it (what it holds next)
    applied = -1  # generation it said it answers from
    writing = -1  # generation of the snapshot being written to it, or last written
    progress_at = 0.0  # when it last took a snapshot, or fell behind
    restarts = 0
    counters: DnsStats | None = None  # its latest DNS counters
    pending: dict[int, asyncio.Future[DnsStats]] = dataclasses.field(default_factory=dict)


class WorkerPool:
    """Starts, feeds, restarts and stops the DNS workers."""

    def __init__(self, settings: WorkerSettings, snapshots: Callable[[], Snapshot]) -> None:
        if settings.count < 1:
            raise ValueError("a worker pool needs one worker at least")
        self.settings = settings
        self._snapshots = snapshots
        self._slots: list[_Slot] = []
        self._supervisors: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._encoding_for: Snapshot | None = None  # the snapshot of these encodings:
        self._encodings: dict[int, asyncio.Future[bytes]] = {}  # by id() of their base
        self._locator: Locator | None = None
        self._geo_epoch = 0
        self._requests = 0
        self._retired = DnsStats()  # counters of workers that were replaced
        self._applied: asyncio.Condition | None = None  # notified on every APPLIED
        self.snapshots_sent = 0  # snapshots pickled for the workers (fewer than made: coalesced)

    async def start(self, host: str, port: int) -> int:
        """Bind the DNS sockets, start every worker and wait until each answers; returns
        the port. Raises WorkerError (or OSError from binding)."""
        self._loop = asyncio.get_running_loop()
        self._applied = asyncio.Condition()
        port, pairs = bind_group(host, port, self.settings.count)
        self._slots = [_Slot(i + 1, udp, tcp) for i, (udp, tcp) in enumerate(pairs)]
        try:
            await asyncio.gather(*(self._launch(slot) for slot in self._slots))
        except BaseException:
            await self.stop()
            raise
        self._supervisors = [asyncio.create_task(self._supervise(slot), name=f"dns worker {slot.index}")
                             for slot in self._slots]
        self._supervisors.append(asyncio.create_task(self._watch(), name="dns worker watchdog"))
        return port

    def notify(self, snapshot: Snapshot | None = None) -> None:
        """A new snapshot exists (``Registry.on_change``; from any thread)."""
        loop = self._loop
        if loop is not None and not self._stopping:
            with contextlib.suppress(RuntimeError):  # the loop closed: we are stopping
                loop.call_soon_threadsafe(self._wake_all)

    async def settled(self, timeout: float = SETTLE_TIMEOUT) -> bool:
        """Wait until every serving worker answers from the latest snapshot (or a later
        one); False when ``timeout`` passed first. A worker that is starting gets the
        latest snapshot before it serves."""
        generation = self._snapshots().generation
        condition = self._applied
        assert condition is not None

        def done() -> bool:
            return all(s.applied >= generation for s in self._slots if s.serving)

        async with condition:
            try:
                await asyncio.wait_for(condition.wait_for(done), timeout)
            except TimeoutError:
                return False
        return True

    def status(self) -> list[dict[str, Any]]:
        """Per worker, for ``/healthz``."""
        return [{
            "worker": slot.index,
            "pid": slot.process.pid if slot.process is not None else None,
            "state": "serving" if slot.serving else "starting",
            "generation": slot.applied,
            "restarts": slot.restarts,
        } for slot in self._slots]

    async def collect(self) -> DnsStats:
        """Ask every serving worker for its counters and sum them with the last known."""
        asked = []
        for slot in self._slots:
            if slot.serving and slot.writer is not None:
                self._requests += 1
                future: asyncio.Future[DnsStats] = asyncio.get_running_loop().create_future()
                slot.pending[self._requests] = future
                slot.writer.write(channel.frame(Kind.STATS, REQUEST.pack(self._requests)))
                asked.append((slot, self._requests, future))
        if asked:
            await asyncio.wait([future for _, _, future in asked], timeout=STATS_TIMEOUT)
            for slot, number, _ in asked:  # too busy to answer in time: its last counts stand
                slot.pending.pop(number, None)
        return summed([self._retired, *(s.counters for s in self._slots if s.counters is not None)])

    async def stop(self) -> None:
        """SIGTERM every worker, SIGKILL those that linger, close the sockets."""
        self._stopping = True
        for task in self._supervisors:
            task.cancel()
        for task in self._supervisors:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for slot in self._slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.terminate()
        for slot in self._slots:
            await self._reap(slot)
            slot.udp.close()
            slot.tcp.close()

    # --- one worker -------------------------------------------------------------

    async def _launch(self, slot: _Slot) -> None:
        parent, child = socket.socketpair()
        settings = self.settings
        command = [
            sys.executable, "-m", "gslb.workers.worker", "--index", str(slot.index),
            "--channel", str(child.fileno()), "--udp", str(slot.udp.fileno()),
            "--tcp", str(slot.tcp.fileno()),
            "--rrl-rate", repr(settings.rrl_rate / settings.count), "--rrl-slip", str(settings.rrl_slip),
            "--log-level", settings.log_level, "--log-format", settings.log_format,
            "--query-log", str(settings.query_log),
        ]
        if not settings.udp_batch:
            command.append("--no-udp-batch")
        if settings.geoip is not None:
            command += ["--geoip", str(settings.geoip)]
        try:
            slot.process = subprocess.Popen(
                command, pass_fds=(child.fileno(), slot.udp.fileno(), slot.tcp.fileno()),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            parent.close()
            raise WorkerError(f"dns worker {slot.index} could not be started: {exc}") from exc
        finally:
            child.close()  # the worker holds it now: its exit closes the pair
        slot.started = time.monotonic()
        slot.sent, slot.applied, slot.writing = None, -1, -1
        slot.ready = asyncio.get_running_loop().create_future()
        reader, slot.writer = await asyncio.open_connection(sock=parent)
        slot.listener = asyncio.create_task(self._listen(slot, reader))
        slot.feeder = asyncio.create_task(self._feed(slot))
        slot.wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(slot.ready), READY_TIMEOUT)
        except TimeoutError:
            await self._reap(slot, kill=True)
            raise WorkerError(f"dns worker {slot.index} did not start within "
                              f"{READY_TIMEOUT:g} s") from None
        except WorkerError:
            await self._reap(slot)
            raise
        slot.serving = True
        log.info("dns worker %d serving (pid %d)", slot.index, slot.process.pid)

    async def _listen(self, slot: _Slot, reader: asyncio.StreamReader) -> None:
        """What the worker says, until it goes away."""
        ready = slot.ready
        assert ready is not None
        try:
            while True:
                kind, payload = await channel.read_frame(reader)
                if kind is Kind.READY and not ready.done():
                    ready.set_result(None)
                elif kind is Kind.APPLIED:
                    slot.applied = int(payload)
                    slot.progress_at = time.monotonic()
                    assert self._applied is not None
                    async with self._applied:
                        self._applied.notify_all()
                elif kind is Kind.STATS:
                    (number,) = REQUEST.unpack_from(payload)
                    slot.counters = pickle.loads(payload[REQUEST.size:])
                    future = slot.pending.pop(number, None)
                    if future is not None and not future.done():
                        future.set_result(slot.counters)
                elif kind is Kind.ERROR and not ready.done():
                    ready.set_exception(WorkerError(
                        f"dns worker {slot.index}: {payload.decode(errors='replace')}"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # it exited
        finally:
            slot.serving = False
            if not ready.done():
                code = None
                if slot.process is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        code = await asyncio.to_thread(slot.process.wait, STOP_TIMEOUT)
                ready.set_exception(WorkerError(
                    f"dns worker {slot.index} exited before it was ready ({_exit_text(code)})"))

    async def _feed(self, slot: _Slot) -> None:
        """Send it the latest snapshot whenever there is a newer one than it has."""
        writer = slot.writer
        assert writer is not None
        with contextlib.suppress(ConnectionError):
            while True:
                await slot.wake.wait()
                slot.wake.clear()
                snapshot = self._snapshots()
                if slot.sent is not None and snapshot.generation == slot.sent.generation:
                    continue
                if slot.applied >= slot.writing:  # it was up to date: its clock starts now
                    slot.progress_at = time.monotonic()
                slot.writing = snapshot.generation
                writer.write(await self._encoded(snapshot, slot.sent))
                await writer.drain()
                slot.sent = snapshot

    async def _encoded(self, snapshot: Snapshot, base: Snapshot | None) -> bytes:
        """The SNAPSHOT frame of ``snapshot`` against ``base``, pickled once for all the
        workers that hold ``base`` (in a thread, so the API keeps answering meanwhile)."""
        if self._encoding_for is not snapshot:
            self._encoding_for = snapshot
            self._encodings.clear()
            if snapshot.locator is not self._locator:  # GeoIP reloaded: workers reload too
                self._locator = snapshot.locator
                self._geo_epoch += 1
        future = self._encodings.get(id(base))
        if future is None:
            self.snapshots_sent += 1
            future = asyncio.ensure_future(
                asyncio.to_thread(channel.dump_snapshot, snapshot, self._geo_epoch, base))
            self._encodings[id(base)] = future
        return await future

    def _wake_all(self) -> None:
        for slot in self._slots:
            slot.wake.set()

    async def _supervise(self, slot: _Slot) -> None:
        """Start another worker in the place of one that died."""
        pause = 0.0
        while True:
            assert slot.listener is not None and slot.process is not None
            await slot.listener
            pid, lived = slot.process.pid, time.monotonic() - slot.started
            code = await self._reap(slot)
            log.error("dns worker %d (pid %d) %s; starting another", slot.index, pid, _exit_text(code))
            pause = 0.0 if lived >= QUICK_DEATH else min(MAX_PAUSE, max(0.5, pause * 2))
            while True:
                await asyncio.sleep(pause)
                slot.restarts += 1
                try:
                    await self._launch(slot)
                    break
                except WorkerError as exc:
                    log.error("%s", exc)
                    pause = min(MAX_PAUSE, max(0.5, pause * 2))

    async def _watch(self) -> None:
        """Replace a worker that is alive but stuck: it has taken no snapshot for
        ``hang_timeout`` while one waits for it (its DNS answers would grow stale)."""
        hang = self.settings.hang_timeout
        while True:
            await asyncio.sleep(hang / 4)
            now = time.monotonic()
            for slot in self._slots:
                process = slot.process
                if (slot.serving and process is not None and slot.applied < slot.writing
                        and now - slot.progress_at > hang):
                    log.error("dns worker %d (pid %d) took no snapshot for %.0f s; killing it",
                              slot.index, process.pid, now - slot.progress_at)
                    slot.serving = False
                    process.kill()  # its supervisor starts another

    async def _reap(self, slot: _Slot, kill: bool = False) -> int | None:
        """Wait for the worker's process to end (SIGKILL after STOP_TIMEOUT), forget its
        tasks and keep its counters; returns its exit status."""
        slot.serving = False
        for task in (slot.feeder, slot.listener):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        slot.feeder = slot.listener = None
        if slot.writer is not None:
            slot.writer.close()
            slot.writer = None
        for future in slot.pending.values():
            future.cancel()
        slot.pending.clear()
        if slot.counters is not None:
            self._retired = summed([self._retired, slot.counters])
            slot.counters = None
        process = slot.process
        if process is None:
            return None
        if kill and process.poll() is None:
            process.kill()
        try:
            return await asyncio.to_thread(process.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("dns worker %d (pid %d) did not stop; killing it", slot.index, process.pid)
            process.kill()
            return await asyncio.to_thread(process.wait)


def bind_group(host: str, port: int, count: int) -> tuple[int, list[tuple[socket.socket, socket.socket]]]:
    """``count`` (UDP, TCP) socket pairs on ``host``:``port`` in one SO_REUSEPORT group;
    port 0 picks one free for both. Returns the port and the pairs (TCP listening).

    Port 0 is taken by a TCP socket first: the kernel's automatic choice for TCP never
    lands in another SO_REUSEPORT group, while for UDP it may join one of the same user
    (Linux counts such a port as free: 3 of 60,000 automatic UDP binds joined a group
    here, no TCP one did). The UDP sockets then bind the port TCP got.
    """
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    attempts = BIND_ATTEMPTS if port == 0 else 1
    for attempt in range(attempts):
        opened: list[socket.socket] = []
        try:
            first_tcp = _member(opened, family, socket.SOCK_STREAM, (address[0], port, *address[2:]))
            bound: int = first_tcp.getsockname()[1]
            where = (address[0], bound, *address[2:])
            pairs = [(_member(opened, family, socket.SOCK_DGRAM, where), first_tcp)]
            pairs += [(_member(opened, family, socket.SOCK_DGRAM, where),
                       _member(opened, family, socket.SOCK_STREAM, where))
                      for _ in range(count - 1)]
            return bound, pairs
        except OSError as exc:
            for sock in opened:
                sock.close()
            if attempt == attempts - 1:
                shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                raise OSError(exc.errno, f"cannot listen on {shown}: {exc.strerror}") from exc
    raise AssertionError("unreachable")


def _member(opened: list[socket.socket], family: int, kind: int, where: tuple[Any, ...]) -> socket.socket:
    """A socket of the group bound to ``where`` (listening, for TCP), added to ``opened``."""
    sock = socket.socket(family, kind)
    opened.append(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if kind == socket.SOCK_STREAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(where)
    if kind == socket.SOCK_STREAM:
        sock.listen(socket.SOMAXCONN)
    sock.setblocking(False)
    return sock


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with status {code}"
