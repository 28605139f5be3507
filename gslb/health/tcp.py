"""TCP connect checks on a bare non-blocking socket: the check passes when the connection
opens within the timeout.

An asyncio transport per check (created, then closed at once) costs more CPU than the
connect itself, so the check drives the socket directly: ``connect`` without blocking,
a callback when it becomes writable, ``SO_ERROR`` for the outcome. The connection is
then closed with a reset (``SO_LINGER`` 0), as HAProxy's TCP checks do: an orderly
close would leave a TIME_WAIT socket behind every check, hundreds of thousands a
minute with thousands of endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
from collections.abc import Callable

from gslb.model import IPAddress

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with RST, no TIME_WAIT

# The outcome of a connect: None when it opened, else the error.
Connected = Callable[[BaseException | None], None]


def connect(
    loop: asyncio.AbstractEventLoop, address: IPAddress, port: int, timeout: float, done: Connected
) -> Callable[[], None]:
    """Open a TCP connection to ``address:port``, close it, and call ``done`` with None
    (it opened) or the error (TimeoutError after ``timeout``). Errors in the arguments
    (a port out of range, say) raise here. Returns what abandons the check unfinished
    (``done`` is then never called)."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        code = sock.connect_ex((str(address), port))
    except BaseException:
        sock.close()
        raise
    if code != errno.EINPROGRESS:
        _close(sock)
        handle = loop.call_soon(done, None if code == 0 else _error(code))
        return handle.cancel
    fd = sock.fileno()

    def writable() -> None:
        timer.cancel()
        loop.remove_writer(fd)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        _close(sock)
        done(None if code == 0 else _error(code))

    def timed_out() -> None:
        loop.remove_writer(fd)
        _close(sock)
        done(TimeoutError())

    def abandon() -> None:
        if sock.fileno() != -1:
            timer.cancel()
            loop.remove_writer(fd)
            _close(sock)

    timer = loop.call_later(timeout, timed_out)
    loop.add_writer(fd, writable)
    return abandon


async def check_connect(address: IPAddress, port: int, timeout: float) -> None:
    """``connect`` for coroutines: returns when the connection opened, else raises."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def settle(outcome: BaseException | None) -> None:
        if waiter.done():
            return
        if outcome is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(outcome)

    abandon = connect(loop, address, port, timeout, settle)
    try:
        await waiter
    except asyncio.CancelledError:
        abandon()
        raise


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # never connected: nothing to reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    sock.close()


def _error(code: int) -> OSError:
    exc_type = ConnectionRefusedError if code == errno.ECONNREFUSED else OSError
    return exc_type(code, os.strerror(code))
