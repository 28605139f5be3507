"""Active health checks (HTTP and TCP) with rise/fall thresholds, reported to the registry.

A check only says pass or fail, with a short result text and the round-trip time. A
``Tracker`` per endpoint turns those results into up/down transitions (gdnsd/HAProxy
style), and only transitions reach ``registry.set_probe_state``; every result reaches
``registry.note_check`` for the API.

Checks: ``http`` (GET a path over HTTP or HTTPS, status range, body text, Host header),
``tcp`` (connect); ``none`` and ``heartbeat`` are never probed. An endpoint's own check
overrides its service's.

Initial state: an endpoint starts up but unconfirmed (the registry answers with a new
registration at once); its first check failing takes it down immediately. After that,
``fall`` consecutive failures take an up endpoint down and ``rise`` consecutive passes
bring a down endpoint up.

The ``Prober`` follows ``registry.snapshot``: new endpoints are checked within about a
tenth of a second, then every ``interval`` seconds with ±5% jitter; removed endpoints
stop being checked; a changed check restarts that endpoint's schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp

from gslb.model import CheckKind, EndpointRef, HealthCheck, IPAddress
from gslb.registry import Registry
from gslb.snapshot import Snapshot

log = logging.getLogger("gslb.health")

SYNC_PERIOD = 0.05  # seconds between looks at the registry's generation
FIRST_STAGGER = 0.1  # a new endpoint's first check waits up to this (or its interval)
JITTER = 0.05  # later checks are interval × (1 ± JITTER) apart, so they never fire in bursts
USER_AGENT = "gslb-prober/0.1"
MAX_BODY = 64 * 1024  # bytes of a response searched for the check's ``body`` text


# --- checks ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one check found: pass or fail, a short text for humans, the RTT in seconds."""

    ok: bool
    result: str
    rtt: float | None = None


def check_port(check: HealthCheck, port: int | None) -> int | None:
    """The port a check connects to: the check's, else the endpoint's, else 80 for HTTP."""
    if check.port is not None:
        return check.port
    if port is not None:
        return port
    return 80 if check.kind is CheckKind.HTTP else None


def http_url(address: IPAddress, port: int, path: str, tls: bool = False) -> str:
    """``http://ADDRESS:PORT/PATH`` (https with ``tls``), with an IPv6 address in brackets."""
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"{'https' if tls else 'http'}://{host}:{port}{path}"


_VERIFYING = ssl.create_default_context()


def _tls(check: HealthCheck) -> ssl.SSLContext | bool:
    """The TLS setting of a check: verify against the system's CAs, or not at all."""
    if not check.tls:
        return True  # aiohttp's default; unused for http URLs
    return _VERIFYING if check.tls_verify else False


def make_session() -> aiohttp.ClientSession:
    """The HTTP client for checks: one connection per check, no proxy from the environment.

    Reusing pooled connections would let a check pass over an old socket after the
    endpoint stopped accepting new ones, so every check connects afresh.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, limit=0),
        trust_env=False,
        headers={"User-Agent": USER_AGENT, "Connection": "close"},
        auto_decompress=False,
    )


async def check_http(
    session: aiohttp.ClientSession, address: IPAddress, port: int, check: HealthCheck
) -> CheckResult:
    """GET the check's path; pass when the status is within [expect_min, expect_max] and,
    when the check names a ``body`` text, the first 64 KiB of the body contain it.

    The connection goes to the address; ``host`` only sets the Host header and the name
    the certificate must match, so a check never resolves names.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    headers = {} if check.host is None else {"Host": check.host}
    tls_name = check.host if check.tls and check.tls_verify else None
    body = b""
    try:
        async with session.get(
            http_url(address, port, check.path, check.tls),
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=check.timeout),
            headers=headers,
            ssl=_tls(check),
            server_hostname=tls_name,
        ) as response:
            status = response.status
            if check.body is not None:
                body = await response.content.read(MAX_BODY)
            rtt = loop.time() - started
    except TimeoutError:
        return CheckResult(False, f"timeout after {check.timeout:g}s")
    except aiohttp.ClientConnectorError as exc:
        return CheckResult(False, _os_error_text(exc.os_error))
    except (aiohttp.ClientError, OSError) as exc:
        return CheckResult(False, _error_text(exc))
    if check.expect_min <= status <= check.expect_max:
        if check.body is not None and check.body.encode() not in body:
            return CheckResult(False, f"HTTP {status} without {check.body!r} in the body", rtt)
        return CheckResult(True, f"HTTP {status}", rtt)
    expected = (
        str(check.expect_min)
        if check.expect_min == check.expect_max
        else f"{check.expect_min}-{check.expect_max}"
    )
    return CheckResult(False, f"HTTP {status} (expected {expected})", rtt)


async def check_tcp(address: IPAddress, port: int, timeout: float) -> CheckResult:
    """Pass when a TCP connection to ``address:port`` opens within ``timeout``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(asyncio.Protocol, str(address), port)
    except TimeoutError:
        return CheckResult(False, f"timeout after {timeout:g}s")
    except OSError as exc:
        return CheckResult(False, _os_error_text(exc))
    rtt = loop.time() - started
    transport.close()
    return CheckResult(True, "connected", rtt)


async def run_check(
    session: aiohttp.ClientSession, check: HealthCheck, ref: EndpointRef
) -> CheckResult:
    """Run ``check`` against the endpoint ``ref`` names; anything unexpected is a failure."""
    port = check_port(check, ref.port)
    try:
        if not check.probed:
            return CheckResult(True, "not checked")
        if port is None:
            return CheckResult(False, "no port to check: set check.port or the endpoint's port")
        if check.kind is CheckKind.TCP:
            return await check_tcp(ref.address, port, check.timeout)
        return await check_http(session, ref.address, port, check)
    except Exception as exc:  # a bug in a check must not take the prober down
        return CheckResult(False, f"check error: {_error_text(exc)}")


def _os_error_text(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "connect timeout"
    return exc.strerror.lower() if exc.strerror else _error_text(exc)


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- rise/fall -----------------------------------------------------------------------


class ProbeState(enum.Enum):
    UNCONFIRMED = "unconfirmed"  # up because nothing says otherwise yet; one failure: down
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Tracker:
    """Rise/fall thresholds over consecutive check results of one endpoint."""

    rise: int
    fall: int
    state: ProbeState = ProbeState.UNCONFIRMED
    streak: int = 0  # consecutive results that contradict ``state``

    @classmethod
    def start(cls, check: HealthCheck, up: bool) -> Tracker:
        """A tracker for an endpoint the registry currently holds up or down."""
        state = ProbeState.UNCONFIRMED if up else ProbeState.DOWN
        return cls(check.rise, check.fall, state)

    @property
    def up(self) -> bool:
        return self.state is not ProbeState.DOWN

    def observe(self, ok: bool) -> Tracker:
        """The tracker after one more check result."""
        if self.state is ProbeState.UNCONFIRMED:
            return dataclasses.replace(
                self, state=ProbeState.UP if ok else ProbeState.DOWN, streak=0
            )
        if ok == self.up:
            return dataclasses.replace(self, streak=0)
        streak = self.streak + 1
        if streak >= (self.fall if self.up else self.rise):
            return dataclasses.replace(
                self, state=ProbeState.DOWN if self.up else ProbeState.UP, streak=0
            )
        return dataclasses.replace(self, streak=streak)

    def reason(self, after: Tracker, result: str) -> str:
        """Why ``self`` became ``after``, for the registry's log."""
        if self.state is ProbeState.UNCONFIRMED:
            return f"first check {'passed' if after.up else 'failed'}: {result}"
        count = self.streak + 1
        word = "passed" if after.up else "failed"
        return f"{count} {word} check{'s' if count != 1 else ''}: {result}"


# --- scheduling ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    check: HealthCheck
    task: asyncio.Task[None]


# Told of every check's outcome (metrics): endpoint, its check, passed, round trip.
CheckObserver = Callable[[EndpointRef, HealthCheck, bool, float | None], None]


class Prober:
    """Checks every probed endpoint of ``registry`` and reports what it finds.

    ``run()`` loops until cancelled; at most ``max_concurrent`` checks run at once.
    """

    def __init__(
        self,
        registry: Registry,
        max_concurrent: int = 200,
        *,
        rng: random.Random | None = None,
        on_check: CheckObserver | None = None,
    ) -> None:
        self._registry = registry
        self._on_check = on_check
        self._max_concurrent = max_concurrent
        self._rng = rng or random.Random()
        self._targets: dict[EndpointRef, _Target] = {}
        self._trackers: dict[EndpointRef, Tracker] = {}
        self._generation = -1
        self._http: aiohttp.ClientSession | None = None
        self._semaphore = asyncio.Semaphore(max_concurrent)

    async def run(self) -> None:
        """Follow the registry and check its endpoints until cancelled."""
        async with self._session() as session:
            self._http = session
            self._semaphore = asyncio.Semaphore(self._max_concurrent)
            try:
                while True:
                    self._follow()
                    await asyncio.sleep(SYNC_PERIOD)
            finally:
                await self._stop_all()
                self._http = None

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[aiohttp.ClientSession]:
        session = make_session()
        try:
            yield session
        finally:
            await session.close()

    def _follow(self) -> None:
        """Catch up with the registry's latest snapshot, if it changed."""
        snapshot = self._registry.snapshot
        if snapshot.generation == self._generation:
            return
        self._generation = snapshot.generation
        try:
            self._sync(snapshot)
        except Exception:  # a registry bug must not stop the probing of everything else
            log.exception("prober: cannot follow registry changes")

    def _sync(self, snapshot: Snapshot) -> None:
        """Start, restart and stop endpoint schedules to match ``snapshot``."""
        session = self._http
        if session is None:
            return  # not running
        wanted: dict[EndpointRef, tuple[HealthCheck, bool]] = {}
        # Trackers resume from this instance's own verdicts: the snapshot's probe state
        # may be a quorum of several instances that this prober must not take as its own.
        verdicts = self._registry.probe_verdicts()
        for zone in snapshot.zones.values():
            for service in zone.services.values():
                for view in service.endpoints:
                    endpoint = view.endpoint
                    check = service.service.check_of(endpoint)
                    ref = EndpointRef(service.name, view.pool.name, endpoint.address, endpoint.port)
                    if check.probed:
                        wanted[ref] = (check, verdicts.get(ref, True))
                    elif not view.health.probe_up:  # its check was just switched off
                        self._registry.set_probe_state(ref, True, "health check disabled")

        for ref in [ref for ref in self._targets if ref not in wanted]:
            self._targets.pop(ref).task.cancel()
            self._trackers.pop(ref, None)

        for ref, (check, probe_up) in wanted.items():
            target = self._targets.get(ref)
            tracker = self._trackers.get(ref)
            if target is not None and tracker is not None:
                if target.check == check and tracker.up == probe_up:
                    continue
                target.task.cancel()
                if tracker.up == probe_up:  # only the check changed: keep what we know
                    tracker = Tracker(check.rise, check.fall, tracker.state)
                else:  # someone else reset its health (re-registered): start afresh
                    tracker = Tracker.start(check, probe_up)
            else:
                tracker = Tracker.start(check, probe_up)
            self._trackers[ref] = tracker
            task = asyncio.create_task(self._probe_forever(ref, check, session), name=f"probe {ref}")
            self._targets[ref] = _Target(check, task)

    async def _probe_forever(
        self, ref: EndpointRef, check: HealthCheck, session: aiohttp.ClientSession
    ) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self._rng.uniform(0, min(check.interval, FIRST_STAGGER)))
        while True:
            started = loop.time()
            try:
                async with self._semaphore:
                    result = await run_check(session, check, ref)
                self._report(ref, result)
            except Exception:
                log.exception("prober: cannot report the check of %s", ref)
            delay = check.interval * self._rng.uniform(1 - JITTER, 1 + JITTER)
            await asyncio.sleep(max(0.0, started + delay - loop.time()))

    def _report(self, ref: EndpointRef, result: CheckResult) -> None:
        self._follow()  # the endpoint may have gone (or changed) while its check ran
        before = self._trackers.get(ref)
        if before is None or self._targets[ref].task is not asyncio.current_task():
            return  # removed, or restarted with a new check: this result is stale
        self._registry.note_check(ref, result.ok, result.result, result.rtt)
        if self._on_check is not None:
            self._on_check(ref, self._targets[ref].check, result.ok, result.rtt)
        after = before.observe(result.ok)
        self._trackers[ref] = after
        if after.up != before.up or before.state is ProbeState.UNCONFIRMED:
            # the first verdict is reported even when it agrees: it confirms the state
            self._registry.set_probe_state(ref, after.up, before.reason(after, result.result))

    async def _stop_all(self) -> None:
        tasks = [target.task for target in self._targets.values()]
        self._targets.clear()
        self._trackers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
