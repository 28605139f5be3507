"""TCP connect checks: the check passes when a connection opens within the timeout.

Thousands of these a second must be cheap, so a ``TcpChecker`` drives bare non-blocking
sockets through one epoll set of its own, registered once on the event loop. A check
arms its socket in the set with ``EPOLLOUT | EPOLLONESHOT`` (one ``epoll_ctl``), and
when the set is readable one callback takes every finished connect in one batch.
Timeouts come from one sweep for all of them (``gslb.health.sweep``), not a timer per
check. (The loop's ``add_writer`` per socket made uvloop create and tear down
a poll handle each time: six ``epoll_ctl`` and two ``ioctl`` calls a check.)

A check is the handshake's first two packets and a reset, as HAProxy's TCP checks
are: SYN, the endpoint's SYN-ACK, RST. Quick ACKs are off on the socket
(``TCP_QUICKACK`` 0), so the kernel holds back the handshake's last ACK for up to
200 ms while the connect reports success, and the reset goes out in its place. The
endpoint's kernel then drops the half-made connection: its application never accepts
a check, never sees it reset, and its kernel never makes a full socket for it. What
the check proves is unchanged: a SYN-ACK comes only from a listener with room in its
queues, the same condition under which a full handshake completes. (On loopback,
where the prober pays for both ends, the kernel's time per check falls by about 40 %.)

A reset rather than an orderly close also leaves no TIME_WAIT socket behind a check,
hundreds of thousands a minute with thousands of endpoints (should the held-back ACK
go out before the reset, the reset still ends the connection at once). The reset is a
``connect`` to an ``AF_UNSPEC`` address (Linux and the BSDs dissolve a TCP association
that way, see connect(2)), after which the same socket, still in the epoll set, makes
the next check: a socket made and closed per check costs the kernel much more than
that (on loopback about 50 against 30 µs of system time a check: a socket, a
descriptor and an epoll entry allocated and freed). Python's socket API cannot name
``AF_UNSPEC`` for an AF_INET socket, so that one call goes through ``ctypes``. A
connect that failed needs no reset; its errno (``SO_ERROR``) names the failure. A
connect that timed out or was abandoned closes its socket (with ``SO_LINGER`` 0: a
reset, should it have opened meanwhile).

A check makes four system calls: turning quick ACKs off (the reset that dissolves a
connection turns them back on), the connect, the ``epoll_ctl`` that arms it, the
``AF_UNSPEC`` connect; the epoll set's wait is shared by a batch. Linux only
(``select.epoll``, ``TCP_QUICKACK``).
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

from gslb.health.sweep import TimeoutSweep
from gslb.model import IPAddress

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with RST, no TIME_WAIT
_BATCH = 1024  # finished connects taken from the epoll set per callback
_WRITABLE = select.EPOLLOUT | select.EPOLLONESHOT
_FAILED = select.EPOLLERR | select.EPOLLHUP
_NONBLOCKING = socket.SOCK_STREAM | socket.SOCK_NONBLOCK  # no setblocking() call
_TCP, _QUICKACK = socket.IPPROTO_TCP, socket.TCP_QUICKACK
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

    def __init__(self, checker: TcpChecker, sock: socket.socket, family: int, done: Connected) -> None:
        self.checker = checker
        self.sock: socket.socket | None = sock  # None once finished or abandoned
        self.family = family
        self.fd = sock.fileno()
        self.done = done
        self.tick = 0  # the sweep that times it out (``TimeoutSweep.arm``)

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
        self._timeouts: TimeoutSweep[_Connect] = TimeoutSweep(loop, self._time_out)
        # Sockets of finished checks, unconnected and still in the epoll set (disarmed).
        self._idle: dict[int, list[socket.socket]] = {socket.AF_INET: [], socket.AF_INET6: []}
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
            sock.setsockopt(_TCP, _QUICKACK, 0)  # the handshake's last ACK held back
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
        check = _Connect(self, sock, family, done)
        check.tick = self._timeouts.arm(check, timeout)
        self._pending[check.fd] = check
        return check.abandon

    def close(self) -> None:
        """Abandon every connect under way and release the epoll set."""
        for check in list(self._pending.values()):
            check.abandon()
        for idle in self._idle.values():
            for sock in idle:
                sock.close()
            idle.clear()
        self._timeouts.close()
        if not self._epoll.closed:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()

    def _forget(self, check: _Connect) -> None:
        check.sock = None
        del self._pending[check.fd]
        self._timeouts.disarm(check, check.tick)

    def _ready(self) -> None:
        """Finish the connects the epoll set reports."""
        pending, disarm, idle_of = self._pending, self._timeouts.disarm, self._idle
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
            disarm(check, check.tick)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if events & _FAILED else 0
            # Dissolve the connection (a reset when it opened) and keep the socket for the
            # next check.
            idle = idle_of[check.family]
            if len(idle) < IDLE and _libc_connect(fd, _UNSPEC, _UNSPEC_SIZE) == 0:
                idle.append(sock)
            else:
                _reset(sock)
            check.done(None if code == 0 else _error(code))

    def _time_out(self, check: _Connect) -> None:
        """The sweep found ``check`` past its timeout."""
        sock = check.sock
        if sock is None:
            return
        check.sock = None
        del self._pending[check.fd]
        _reset(sock)  # it may have opened since the last look
        check.done(TimeoutError())


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
