"""Active health checks (HTTP and TCP) with rise/fall thresholds, reported to the registry.

A check only says pass or fail, with a short result text and the round-trip time. A
``Tracker`` per endpoint turns those results into up/down transitions (gdnsd/HAProxy
style). Every result reaches ``registry.note_checks`` (in batches) for the API, with the
tracker's verdict when it has one.

Checks: ``http`` (GET a path over HTTP or HTTPS, status range, body text, Host header;
over a kept connection, see ``gslb.health.http``), ``tcp`` (connect, see
``gslb.health.tcp``); ``none`` and ``heartbeat`` are never probed. An endpoint's own
check overrides its service's.

Initial state: an endpoint starts up but unconfirmed (the registry answers with a new
registration at once); its first check failing takes it down immediately. After that,
``fall`` consecutive failures take an up endpoint down and ``rise`` consecutive passes
bring a down endpoint up.

The ``Prober`` follows ``registry.snapshot`` (woken by its changes): new endpoints are
checked within about a tenth of a second, the second time 0.5-1 interval later, then
every ``interval`` seconds with ±5% jitter; removed endpoints stop being checked; a
changed check restarts that endpoint's schedule. It is built for thousands of endpoints
a second on one core: one wheel of schedules, checks on callbacks where they can,
results batched. A check whose result leaves its tracker as it is (``Tracker.steady``:
nearly all of them) costs one plain tuple for the registry and one call to the
observer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import random
import resource
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter

from gslb.health import tcp
from gslb.health.http import BadResponseError, HttpChecker, HttpTarget, Outcome, Response
from gslb.model import CheckKind, EndpointRef, HealthCheck, IPAddress
from gslb.registry import CheckFields, Registry
from gslb.snapshot import ServiceView, Snapshot

log = logging.getLogger("gslb.health")

SYNC_PERIOD = 0.05  # at most one look at a changed registry per this many seconds
MAX_SLEEP = 1.0  # the longest the loop sleeps with nothing due (a change wakes it)
FIRST_STAGGER = 0.1  # a new endpoint's first check waits up to this (or its interval) ...
FIRST_RATE = 5000  # ... or longer when many appear at once: at most this many first
# checks (each a new connection) a second, so that a zone file of thousands of endpoints
# does not open them all in the same instant
# The second check comes 0.5-1 interval after the first, so that endpoints that appeared
# together (a zone file of thousands) spread over the interval instead of all checking
# at the same moment; later checks are interval × (1 ± JITTER) apart.
SECOND = (0.5, 1.0)
JITTER = 0.05
STEADY = (1 - JITTER, 1 + JITTER)
REPORT_PERIOD = 0.01  # results are handed to the registry in batches this often
# Checks under way at once. Over kept connections one costs no more than a socket already
# open, and 10,000 checks a second of endpoints 100 ms away keep a thousand under way.
MAX_CONCURRENT = 1000
TICK = 0.01  # the wheel's slot: checks due within one start together (one timer for all)


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


def make_session(keep: int | None = None) -> HttpChecker:
    """The HTTP client of the checks: keeps a connection per endpoint for the next check,
    at most ``keep`` of them (default: half the file descriptors this process may open,
    after raising its soft limit to the hard one, as Go programs do: the soft default of
    1024 would keep a few hundred endpoints' connections)."""
    if keep is None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        keep = max(0, min(soft, 1 << 20) // 2)
    return HttpChecker(keep)


async def check_http(
    session: HttpChecker, address: IPAddress, port: int, check: HealthCheck,
    target: HttpTarget | None = None,
) -> CheckResult:
    """GET the check's path; pass when the status is within [expect_min, expect_max] and,
    when the check names a ``body`` text, the first 64 KiB of the body contain it.

    The connection goes to the address; ``host`` only sets the Host header and the name
    the certificate must match, so a check never resolves names. ``target`` (made by the
    caller once per endpoint) keeps its connection for the next check.
    """
    started = perf_counter()
    if target is None:
        target = HttpTarget(address, port, check)
    outcome: Outcome
    try:
        async with asyncio.timeout(check.timeout):
            outcome = await session.get(target)
    except (TimeoutError, OSError, ssl.SSLError, BadResponseError) as exc:
        outcome = exc
    return judge_http(check, outcome, perf_counter() - started)


def judge_http(check: HealthCheck, outcome: Outcome, rtt: float) -> CheckResult:
    """What an HTTP check's response (or error) says, by the check's rules."""
    return CheckResult(*_judge_http(check, outcome, rtt))


Judged = tuple[bool, str, float | None]  # a CheckResult's fields, made for each check


def _judge_http(check: HealthCheck, outcome: Outcome, rtt: float) -> Judged:
    if not isinstance(outcome, Response):
        if isinstance(outcome, TimeoutError):
            return False, f"timeout after {check.timeout:g}s", None
        if isinstance(outcome, OSError):
            return False, _os_error_text(outcome), None
        if isinstance(outcome, BadResponseError):
            return False, str(outcome), None
        return False, f"check error: {_error_text(outcome)}", None
    status = outcome.status
    if check.expect_min <= status <= check.expect_max:
        if check.body is not None and check.body.encode() not in outcome.body:
            return False, f"HTTP {status} without {check.body!r} in the body", rtt
        return True, _STATUS_TEXT.get(status) or f"HTTP {status}", rtt
    expected = (
        str(check.expect_min)
        if check.expect_min == check.expect_max
        else f"{check.expect_min}-{check.expect_max}"
    )
    return False, f"HTTP {status} (expected {expected})", rtt


_STATUS_TEXT = {status: f"HTTP {status}" for status in range(200, 400)}  # made once, not per check


async def check_tcp(
    address: IPAddress, port: int, timeout: float, checker: tcp.TcpChecker | None = None
) -> CheckResult:
    """Pass when a TCP connection to ``address:port`` opens within ``timeout``."""
    started = perf_counter()
    try:
        await tcp.check_connect(address, port, timeout, checker)
    except (TimeoutError, OSError) as exc:
        return judge_tcp(timeout, exc, 0.0)
    return judge_tcp(timeout, None, perf_counter() - started)


def judge_tcp(timeout: float, outcome: BaseException | None, rtt: float) -> CheckResult:
    """What a TCP connect's outcome says."""
    return CheckResult(*_judge_tcp(timeout, outcome, rtt))


def _judge_tcp(timeout: float, outcome: BaseException | None, rtt: float) -> Judged:
    if outcome is None:
        return True, "connected", rtt
    if isinstance(outcome, TimeoutError):
        return False, f"timeout after {timeout:g}s", None
    if isinstance(outcome, OSError):
        return False, _os_error_text(outcome), None
    return False, f"check error: {_error_text(outcome)}", None


async def run_check(
    session: HttpChecker, check: HealthCheck, ref: EndpointRef, target: HttpTarget | None = None
) -> CheckResult:
    """Run ``check`` against the endpoint ``ref`` names; anything unexpected is a failure.
    An HTTP check's ``target`` keeps its connection from one check to the next."""
    port = check_port(check, ref.port)
    try:
        if not check.probed:
            return CheckResult(True, "not checked")
        if port is None:
            return CheckResult(False, "no port to check: set check.port or the endpoint's port")
        if check.kind is CheckKind.TCP:
            return await check_tcp(ref.address, port, check.timeout)
        return await check_http(session, ref.address, port, check, target)
    except Exception as exc:  # a bug in a check must not take the prober down
        return CheckResult(False, f"check error: {_error_text(exc)}")


def _os_error_text(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "connect timeout"
    if isinstance(exc, ssl.SSLError):
        return _error_text(exc)
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

    @property
    def steady(self) -> bool | None:
        """The check result that leaves this tracker as it is (``observe`` returns it
        unchanged); None when every result changes it."""
        if self.state is ProbeState.UNCONFIRMED or self.streak:
            return None
        return self.up

    def observe(self, ok: bool) -> Tracker:
        """The tracker after one more check result."""
        if self.state is ProbeState.UNCONFIRMED:
            return dataclasses.replace(
                self, state=ProbeState.UP if ok else ProbeState.DOWN, streak=0
            )
        if ok == self.up:
            return self if self.streak == 0 else dataclasses.replace(self, streak=0)
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


class _Schedule:
    """One probed endpoint: its check, when it is due next, its connection (HTTP), its
    rise/fall tracker."""

    __slots__ = ("ref", "check", "port", "target", "tcp", "due", "started", "sent", "spread",
                 "stopped", "done", "connected", "tracker", "steady")

    def __init__(
        self, ref: EndpointRef, check: HealthCheck, due: float, http: HttpChecker, tracker: Tracker,
        http_done: Callable[[_Schedule, Outcome], None],
        tcp_done: Callable[[_Schedule, BaseException | None], None],
    ) -> None:
        self.ref = ref
        self.check = check
        self.tracker = tracker
        self.steady = tracker.steady  # the result that changes nothing: most checks' result
        self.port = check_port(check, ref.port)
        self.target: HttpTarget | None = None
        if check.kind is CheckKind.HTTP and self.port is not None and 0 < self.port < 65536:
            self.target = HttpTarget(ref.address, self.port, check, http)
        # TCP: the socket family and address, made once (None: not a TCP check)
        self.tcp = None if check.kind is not CheckKind.TCP or self.port is None else (
            tcp.sockaddr(ref.address, self.port))
        self.due = due
        self.started = due  # the loop's time the last check started: the schedule's clock
        self.sent = 0.0  # perf_counter() then: the RTT's (uvloop's clock counts whole ms)
        self.spread = SECOND
        self.stopped = False  # removed or replaced: its results are stale
        # what a check's end calls: made once, not per check
        self.done: Callable[[Outcome], None] = functools.partial(http_done, self)
        self.connected: tcp.Connected = functools.partial(tcp_done, self)


# Told of every check's outcome (metrics): endpoint, its check, passed, round trip.
CheckObserver = Callable[[EndpointRef, HealthCheck, bool, float | None], None]


class Prober:
    """Checks every probed endpoint of ``registry`` and reports what it finds.

    ``run()`` loops until cancelled; at most ``max_concurrent`` checks run at once.

    One wheel of schedules in slots of ``TICK`` starts the checks that are due (no task
    sleeps per endpoint); the loop sleeps until the next slot that holds one, or until
    the registry changes, so an idle prober does not wake a hundred times a second (each
    wake takes the GIL from the DNS thread). An HTTP check over a kept connection and a
    TCP check run on callbacks alone; an HTTP check that must open a connection runs as
    a task. Results reach the registry in batches every ``REPORT_PERIOD`` (one lock and
    at most one snapshot for many results); the observer ``on_check`` hears of each at
    once.
    """

    def __init__(
        self,
        registry: Registry,
        max_concurrent: int = MAX_CONCURRENT,
        *,
        rng: random.Random | None = None,
        on_check: CheckObserver | None = None,
    ) -> None:
        self._registry = registry
        self._on_check = on_check
        self._max_concurrent = max_concurrent
        self._rng = rng or random.Random()
        self._targets: dict[EndpointRef, _Schedule] = {}
        self._generation = -1
        self._http: HttpChecker | None = None
        self._tcp: tcp.TcpChecker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._random = self._rng.random
        # Schedules by the tick they are due in: a list per tick, no allocation per check
        # (a heap entry per check would be a tuple that lives a whole interval, and
        # thousands of those a second make the garbage collector walk everything).
        self._wheel: dict[int, list[_Schedule]] = {}
        self._next_tick = 0  # the first tick not yet looked at
        self._running = 0  # checks under way
        self._tasks: set[asyncio.Task[None]] = set()  # checks that connect
        self._pending: list[CheckFields] = []  # plain tuples: thousands a second
        self._flush: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None  # the loop's sleep
        self._wake_tick = 0  # the slot the loop sleeps until
        self._changed = True  # the registry published since the last look
        self._signatures: dict[str, object] = {}  # service -> its check and endpoints, synced
        self._refs: dict[str, set[EndpointRef]] = {}  # service -> its probed endpoints

    async def run(self) -> None:
        """Follow the registry and check its endpoints until cancelled."""
        loop = self._loop = asyncio.get_running_loop()

        def changed(_snapshot: Snapshot) -> None:  # the writer's thread
            if not self._changed:
                self._changed = True
                loop.call_soon_threadsafe(self._wake)

        unsubscribe = self._registry.on_change(changed)
        async with make_session() as session:
            self._http = session
            self._tcp = tcp.TcpChecker(loop)
            try:
                next_follow = 0.0
                while True:
                    now = loop.time()
                    if self._changed and now >= next_follow:
                        self._changed = False
                        self._follow()
                        next_follow = now + SYNC_PERIOD
                    self._start_due(loop)
                    await self._sleep(loop, next_follow if self._changed else None)
            finally:
                unsubscribe()
                await self._stop_all()
                self._http = self._tcp = None

    async def _sleep(self, loop: asyncio.AbstractEventLoop, follow: float | None) -> None:
        """Sleep until the next slot of the wheel that holds a check, ``follow`` (the
        loop's time), or ``_wake()``, whichever comes first."""
        now = loop.time()
        wheel = self._wheel
        if wheel:
            tick = self._next_tick if self._next_tick in wheel else min(wheel)
            until = tick * TICK
        else:
            until = now + MAX_SLEEP
        if follow is not None:
            until = min(until, follow)
        delay = until - now
        if delay <= 0:  # due checks wait for the concurrency limit: look again soon
            delay = TICK
        delay = min(delay, MAX_SLEEP)
        self._wake_tick = int((now + delay) / TICK)
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(delay, self._wake)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
        """Start, restart and stop endpoint schedules to match ``snapshot``.

        Most snapshots differ from the last one only in health; a service whose check
        and endpoints are the same objects as last time is skipped without a look at
        each endpoint, so a new snapshot costs little with thousands of endpoints.
        """
        if self._http is None:
            return  # not running
        present: set[str] = set()
        changed: list[ServiceView] = []
        for zone in snapshot.zones.values():
            for service in zone.services.values():
                present.add(service.name)
                signature = (service.service.check,
                             tuple([(view.pool.name, view.endpoint) for view in service.endpoints]))
                if self._signatures.get(service.name) != signature:
                    self._signatures[service.name] = signature
                    changed.append(service)
        if changed:
            # Trackers resume from this instance's own verdicts: the snapshot's probe
            # state may be a quorum of several instances.
            verdicts = self._registry.probe_verdicts()
            stagger = max(FIRST_STAGGER, sum(len(s.endpoints) for s in changed) / FIRST_RATE)
            for service in changed:
                self._sync_service(service, verdicts, stagger)
        for name in [name for name in self._signatures if name not in present]:
            del self._signatures[name]
            for ref in self._refs.pop(name, set()):
                self._stop(ref)

    def _sync_service(
        self, service: ServiceView, verdicts: dict[EndpointRef, bool], stagger: float
    ) -> None:
        wanted: dict[EndpointRef, tuple[HealthCheck, bool]] = {}
        for view in service.endpoints:
            endpoint = view.endpoint
            check = service.service.check_of(endpoint)
            ref = EndpointRef(service.name, view.pool.name, endpoint.address, endpoint.port)
            if check.probed:
                wanted[ref] = (check, verdicts.get(ref, True))
            elif not view.health.probe_up:  # its check was just switched off
                self._registry.set_probe_state(ref, True, "health check disabled")

        refs = self._refs.setdefault(service.name, set())
        for ref in [ref for ref in refs if ref not in wanted]:
            refs.discard(ref)
            self._stop(ref)

        now = asyncio.get_running_loop().time()
        for ref, (check, probe_up) in wanted.items():
            refs.add(ref)
            schedule = self._targets.get(ref)
            if schedule is not None:
                tracker = schedule.tracker
                if schedule.check == check and tracker.up == probe_up:
                    continue
                self._stop(ref)
                if tracker.up == probe_up:  # only the check changed: keep what we know
                    tracker = Tracker(check.rise, check.fall, tracker.state)
                else:  # someone else reset its health (re-registered): start afresh
                    tracker = Tracker.start(check, probe_up)
            else:
                tracker = Tracker.start(check, probe_up)
            first = now + self._rng.uniform(0, min(check.interval, stagger))
            assert self._http is not None
            schedule = _Schedule(ref, check, first, self._http, tracker, self._http_done,
                                 self._tcp_done)
            self._targets[ref] = schedule
            self._push(schedule)

    def _stop(self, ref: EndpointRef) -> None:
        schedule = self._targets.pop(ref, None)
        if schedule is not None:
            schedule.stopped = True  # left in the wheel; dropped when it comes up
            if schedule.target is not None and self._http is not None:
                self._http.forget(schedule.target)

    # --- running checks ---

    def _start_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the checks that are due, as far as the concurrency limit allows."""
        http, wheel, checker = self._http, self._wheel, self._tcp
        if http is None:
            return
        now = loop.time()
        last = int(now / TICK)
        while wheel and self._next_tick <= last:
            tick = self._next_tick
            due = wheel.get(tick)
            while due:
                if self._running >= self._max_concurrent:
                    return  # the rest stays due
                schedule = due.pop()
                if schedule.stopped:
                    continue
                self._running += 1
                schedule.started = now
                schedule.sent = perf_counter()
                # inline, thousands a second: a GET over a kept connection, a TCP connect
                # on the checker's callbacks; else (a new connection) a task
                target = schedule.target
                if target is not None:
                    if http.send(target, schedule.check.timeout, schedule.done):
                        continue
                elif schedule.tcp is not None and checker is not None:
                    family, where = schedule.tcp
                    try:  # closing the checker abandons it, if need be
                        checker.connect(family, where, schedule.check.timeout, schedule.connected)
                        continue
                    except Exception:  # the task path reports it as a check error
                        pass
                task = loop.create_task(self._check(schedule, http))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            wheel.pop(tick, None)
            # after a long quiet spell, jump to the first tick that holds something
            self._next_tick = tick + 1 if last - tick < 1000 or not wheel else min(wheel)
        if not wheel:
            self._next_tick = max(self._next_tick, last + 1)

    def _tcp_done(self, schedule: _Schedule, outcome: BaseException | None) -> None:
        rtt = perf_counter() - schedule.sent
        if outcome is None:
            self._done(schedule, True, "connected", rtt)
        else:
            self._done(schedule, *_judge_tcp(schedule.check.timeout, outcome, rtt))

    def _http_done(self, schedule: _Schedule, outcome: Outcome) -> None:
        self._done(schedule, *_judge_http(schedule.check, outcome, perf_counter() - schedule.sent))

    async def _check(self, schedule: _Schedule, http: HttpChecker) -> None:
        try:
            result = await run_check(http, schedule.check, schedule.ref, schedule.target)
        except asyncio.CancelledError:
            self._running -= 1
            raise
        self._done(schedule, result.ok, result.result, result.rtt)

    def _done(self, schedule: _Schedule, ok: bool, text: str, rtt: float | None) -> None:
        """A check ended: report it, and put its next check on the wheel.

        Thousands a second: a check whose result leaves its tracker as it is (most of
        them) makes one tuple for the registry and one call to the observer."""
        self._running -= 1
        if self._registry.snapshot.generation != self._generation:
            self._follow()  # the endpoint may have gone (or changed) while its check ran
        if schedule.stopped:  # removed, or restarted with a new check: the result is stale
            if schedule.target is not None and self._http is not None:
                self._http.forget(schedule.target)  # kept by a check that ended after the stop
            return
        ref = schedule.ref
        try:
            verdict: bool | None = None
            reason = ""
            if ok is not schedule.steady:
                before = schedule.tracker
                after = schedule.tracker = before.observe(ok)
                schedule.steady = after.steady
                if after.up != before.up or before.state is ProbeState.UNCONFIRMED:
                    # the first verdict is reported even when it agrees: it confirms the state
                    verdict, reason = after.up, before.reason(after, text)
            self._pending.append((ref, ok, text, rtt, verdict, reason))
            if self._flush is None:
                loop = self._loop or asyncio.get_running_loop()
                self._flush = loop.call_later(REPORT_PERIOD, self._hand_over)
            if self._on_check is not None:
                self._on_check(ref, schedule.check, ok, rtt)
        except Exception:
            log.exception("prober: cannot report the check of %s", ref)
        low, high = schedule.spread
        schedule.spread = STEADY
        # random.uniform(low, high) without its call: low + (high - low) * random()
        schedule.due = schedule.started + schedule.check.interval * (
            low + (high - low) * self._random())
        self._push(schedule)

    def _push(self, schedule: _Schedule) -> None:
        tick = max(int(schedule.due / TICK), self._next_tick)
        due = self._wheel.get(tick)
        if due is None:
            self._wheel[tick] = [schedule]
            if tick < self._wake_tick:  # due before the loop means to look again
                self._wake()
        else:
            due.append(schedule)

    def _hand_over(self) -> None:
        """Give the registry the results gathered since the last time."""
        self._flush = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            self._registry.note_checks(pending)
        except Exception:  # a registry bug must not stop the probing
            log.exception("prober: cannot report %d check results", len(pending))

    async def _stop_all(self) -> None:
        for schedule in self._targets.values():
            schedule.stopped = True
        self._targets.clear()
        self._signatures.clear()
        self._refs.clear()
        self._wheel.clear()
        if self._tcp is not None:
            self._tcp.close()  # abandons the TCP checks under way
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._flush is not None:
            self._flush.cancel()
        self._hand_over()  # what was found before the stop is kept
