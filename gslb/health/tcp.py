"""TCP connect checks: the check passes when a connection opens within the timeout.

Thousands of these a second must be cheap, so a ``TcpChecker`` drives bare non-blocking
sockets through one epoll set of its own, registered once on the event loop. A check
arms its socket in the set with ``EPOLLOUT | EPOLLONESHOT`` (one ``epoll_ctl``), and
when the set is readable one callback takes every finished connect in one batch.
Timeouts come from one sweep every ``RESOLUTION`` while checks are under way, not a
timer per check. (The loop's ``add_writer`` per socket made uvloop create and tear down
a poll handle each time: six ``epoll_ctl`` and two ``ioctl`` calls a check.)

A connection that opened is reset, as HAProxy's TCP checks do: an orderly close would
leave a TIME_WAIT socket behind every check, hundreds of thousands a minute with
thousands of endpoints. The reset is a ``connect`` to an ``AF_UNSPEC`` address (Linux
and the BSDs dissolve a TCP association that way, see connect(2)), after which the same
socket, still in the epoll set, makes the next check: a socket made and closed per
check costs the kernel much more than that (on loopback about 50 against 30 µs of
system time a check: a socket, a descriptor and an epoll entry allocated and freed).
Python's socket API cannot name ``AF_UNSPEC`` for an AF_INET socket, so that one call
goes through ``ctypes``. A connect that failed needs no reset; its errno (``SO_ERROR``)
names the failure. A connect that timed out or was abandoned closes its socket (with
``SO_LINGER`` 0: a reset, should it have opened meanwhile).

A check makes three system calls: the connect, the ``epoll_ctl`` that arms it, the
``AF_UNSPEC`` connect; the epoll set's wait is shared by a batch. Linux only
(``select.epoll``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import select
import socket
import struct
from collections.abc import Callable

from gslb.model import IPAddress

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with RST, no TIME_WAIT
RESOLUTION = 0.01  # seconds: a timeout fires up to this much late (plus loop latency)
_BATCH = 1024  # finished connects taken from the epoll set per callback
_WRITABLE = select.EPOLLOUT | select.EPOLLONESHOT
_FAILED = select.EPOLLERR | select.EPOLLHUP
_NONBLOCKING = socket.SOCK_STREAM | socket.SOCK_NONBLOCK  # no setblocking() call
IDLE = 1024  # sockets kept for the next checks, per family (the prober runs up to 1,000)
_UNSPEC = bytes(16)  # a struct sockaddr whose family is AF_UNSPEC (0)
_UNSPEC_SIZE = len(_UNSPEC)
_EINPROGRESS = errno.EINPROGRESS
# only whether it returned 0 is read: without use_errno a call costs 0.4 µs less
_libc_connect = ctypes.CDLL(None, use_errno=False).connect

# The outcome of a connect: None when it opened, else the error.
Connected = Callable[[BaseException | None], None]
SockAddr = tuple[str, int]


def sockaddr(address: IPAddress, port: int) -> tuple[int, SockAddr]:
    """The socket family and address to connect to ``address:port`` (made once per
    endpoint: ``str`` of an address costs more than the rest of a check's Python)."""
    return (socket.AF_INET6 if address.version == 6 else socket.AF_INET), (str(address), port)


class _Connect:
    """One connect under way."""

    __slots__ = ("checker", "sock", "family", "fd", "done", "tick")

    def __init__(
        self, checker: TcpChecker, sock: socket.socket, family: int, done: Connected, tick: int
    ) -> None:
        self.checker = checker
        self.sock: socket.socket | None = sock  # None once finished or abandoned
        self.family = family
        self.fd = sock.fileno()
        self.done = done
        self.tick = tick  # the sweep that times it out

    def abandon(self) -> None:
        """Stop the check unfinished: ``done`` is never called."""
        sock = self.sock
        if sock is not None:
            self.checker._forget(self)
            _reset(sock)  # it may have opened already


class TcpChecker:
    """Runs connect checks on ``loop``; ``close()`` abandons those under way."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll = select.epoll()  # close-on-exec
        self._pending: dict[int, _Connect] = {}  # by file descriptor
        # Connects by the sweep tick that times them out; a dict per tick so that a
        # finished connect leaves at once (nothing lives on for the whole timeout).
        self._deadlines: dict[int, dict[int, _Connect]] = {}
        self._swept = 0  # the last tick swept
        # Sockets of finished checks, unconnected and still in the epoll set (disarmed).
        self._idle: dict[int, list[socket.socket]] = {socket.AF_INET: [], socket.AF_INET6: []}
        self._sweep: asyncio.TimerHandle | None = None
        loop.add_reader(self._epoll.fileno(), self._ready)

    def __len__(self) -> int:
        """Connects under way."""
        return len(self._pending)

    def connect(
        self, family: int, where: SockAddr, timeout: float, done: Connected
    ) -> Callable[[], None]:
        """Open a TCP connection to ``where`` (see ``sockaddr``), close it, and call
        ``done`` with None (it opened) or the error (TimeoutError after ``timeout``).
        Errors in the arguments (a port out of range, say) raise here. Returns what
        abandons the check unfinished (``done`` is then never called)."""
        idle = self._idle[family]
        kept = bool(idle)
        sock = idle.pop() if kept else socket.socket(family, _NONBLOCKING)
        try:
            code = sock.connect_ex(where)
            if code == _EINPROGRESS:
                if kept:  # still in the set, disarmed since its last check: arm it
                    self._epoll.modify(sock.fileno(), _WRITABLE)
                else:
                    self._epoll.register(sock.fileno(), _WRITABLE)
        except BaseException:
            sock.close()
            raise
        if code != _EINPROGRESS:  # settled at once (refused, unreachable, ...)
            if code == 0:
                _reset(sock)
            else:
                sock.close()
            handle = self._loop.call_soon(done, None if code == 0 else _error(code))
            return handle.cancel
        now = self._loop.time()
        if self._sweep is None:
            self._swept = int(now / RESOLUTION)
            self._sweep = self._loop.call_at((self._swept + 1) * RESOLUTION, self._timeouts)
        # the first sweep after the deadline, and never a tick already swept, even when a
        # sweep's own callback starts a check
        tick = int((now + max(timeout, 0.0)) / RESOLUTION) + 1
        check = _Connect(self, sock, family, done, tick)
        self._pending[check.fd] = check
        due = self._deadlines.get(tick)
        if due is None:
            self._deadlines[tick] = {check.fd: check}
        else:
            due[check.fd] = check
        return check.abandon

    def close(self) -> None:
        """Abandon every connect under way and release the epoll set."""
        for check in list(self._pending.values()):
            check.abandon()
        for idle in self._idle.values():
            for sock in idle:
                sock.close()
            idle.clear()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if not self._epoll.closed:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()

    def _forget(self, check: _Connect) -> None:
        check.sock = None
        del self._pending[check.fd]
        due = self._deadlines.get(check.tick)
        if due is not None:  # else its tick is being swept
            del due[check.fd]
            if not due:
                del self._deadlines[check.tick]

    def _ready(self) -> None:
        """Finish the connects the epoll set reports."""
        pending, deadlines, idle_of = self._pending, self._deadlines, self._idle
        # Look every descriptor up before any ``done`` runs: a callback that abandons a
        # check and starts another could reuse a descriptor later in this batch.
        batch = [(pending[fd], events) for fd, events in self._epoll.poll(0, _BATCH)
                 if fd in pending]
        for check, events in batch:
            sock = check.sock
            if sock is None:  # abandoned by an earlier callback of this batch
                continue
            # what _forget does, inline (thousands a second)
            check.sock = None
            fd = check.fd
            del pending[fd]
            due = deadlines.get(check.tick)
            if due is not None:
                del due[fd]
                if not due:
                    del deadlines[check.tick]
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if events & _FAILED else 0
            # Dissolve the connection (a reset when it opened) and keep the socket for the
            # next check.
            idle = idle_of[check.family]
            if len(idle) < IDLE and _libc_connect(fd, _UNSPEC, _UNSPEC_SIZE) == 0:
                idle.append(sock)
            else:
                _reset(sock)
            check.done(None if code == 0 else _error(code))

    def _timeouts(self) -> None:
        """Time out the connects whose tick has come; run again while any are under way."""
        now = int(self._loop.time() / RESOLUTION)
        deadlines = self._deadlines
        for tick in range(self._swept + 1, now + 1):
            due = deadlines.pop(tick, None)
            if due is None:
                continue
            for check in list(due.values()):
                sock = check.sock
                if sock is None:
                    continue
                check.sock = None
                del self._pending[check.fd]
                _reset(sock)  # it may have opened since the last look
                check.done(TimeoutError())
        self._swept = max(self._swept, now)
        if self._pending:
            self._sweep = self._loop.call_at((self._swept + 1) * RESOLUTION, self._timeouts)
        else:
            self._sweep = None


async def check_connect(
    address: IPAddress, port: int, timeout: float, checker: TcpChecker | None = None
) -> None:
    """A connect check for coroutines: returns when the connection opened, else raises.
    Without a ``checker`` one is made for this check alone."""
    loop = asyncio.get_running_loop()
    own = checker is None
    if checker is None:
        checker = TcpChecker(loop)
    waiter: asyncio.Future[None] = loop.create_future()

    def settle(outcome: BaseException | None) -> None:
        if waiter.done():
            return
        if outcome is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(outcome)

    try:
        family, where = sockaddr(address, port)
        abandon = checker.connect(family, where, timeout, settle)
        try:
            await waiter
        except asyncio.CancelledError:
            abandon()
            raise
    finally:
        if own:
            checker.close()


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a reset if it is connected (no TIME_WAIT left behind)."""
    with contextlib.suppress(OSError):  # already gone: nothing to reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    sock.close()


def _error(code: int) -> OSError:
    exc_type = ConnectionRefusedError if code == errno.ECONNREFUSED else OSError
    return exc_type(code, os.strerror(code))
