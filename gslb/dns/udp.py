"""The UDP listeners: datagrams in, ``DnsServer.answer_datagram`` replies out.

Two ways to move the bytes, with the same replies and the same drop counts:

- ``BatchedUdp`` (Linux): reads up to ``BATCH`` waiting datagrams with one
  ``recvmmsg(2)`` and sends their replies with one ``sendmmsg(2)``, from a reader on the
  event loop. Under load this is most of a query's cost: the event loop's per-datagram
  ``recvfrom``/``sendto`` pair (and its wake-up) is shared by the batch. The system
  calls are reached through ``ctypes``; the buffers, the message headers and the
  senders' addresses are made once and reused.
- ``UdpProtocol``: the event loop's datagram transport, one call per datagram; used
  where ``recvmmsg`` is missing or refused (not Linux, a seccomp filter: see
  ``batching_available``) and with ``--no-udp-batch``.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import functools
import logging
import mmap
import socket
import sys
from collections.abc import Callable
from typing import Any, Protocol, cast

log = logging.getLogger("gslb.dns")

BATCH = 64  # datagrams per recvmmsg: under saturation about a dozen wait at each wake-up
ROUNDS = 4  # full batches read per wake-up before the loop's other work gets its turn
SLOT = 65536  # bytes per datagram buffer: any UDP datagram fits, nothing is truncated
NAME = 32  # bytes per sender address: a sockaddr_in6 (28), aligned
PEERS = 8192  # remembered sender addresses (raw sockaddr -> address tuple)

Answer = Callable[[bytes, tuple[Any, ...]], "bytes | None"]


class UdpListener(Protocol):
    def close(self) -> None: ...


# --- the event loop's transport ---------------------------------------------------------


class UdpProtocol(asyncio.DatagramProtocol):
    """One datagram at a time, through the event loop's transport."""

    def __init__(self, answer: Answer, dropped: dict[str, int]) -> None:
        self._answer = answer
        self._dropped = dropped
        self._transport: asyncio.DatagramTransport | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not always a DatagramTransport subclass (CPython 3.11's selector transport)
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self._paused:
            # The send buffer is full: queries come faster than replies leave. Drop
            # rather than queue without bound; the resolver retries.
            self._dropped["busy"] += 1
            return
        reply = self._answer(data, addr)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from earlier replies (port unreachable); nothing to do.
        log.debug("UDP error: %s", exc)


# --- recvmmsg / sendmmsg ----------------------------------------------------------------


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


def _libc_calls() -> tuple[Any, Any] | None:
    """``recvmmsg`` and ``sendmmsg`` from the C library, or None where there are none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


_CALLS = _libc_calls()


@functools.cache
def batching_available() -> bool:
    """Whether ``BatchedUdp`` can run here: the calls exist, and a system call filter (a
    container's seccomp profile) lets them through."""
    if _CALLS is None:
        return False
    recvmmsg, sendmmsg = _CALLS
    message = _MMsgHdr()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as trial:
        if recvmmsg(trial.fileno(), ctypes.addressof(message), 1, socket.MSG_DONTWAIT, None) < 0 \
                and ctypes.get_errno() not in (errno.EAGAIN, errno.EWOULDBLOCK):
            return False
        return bool(sendmmsg(trial.fileno(), ctypes.addressof(message), 0, 0) == 0)


def _peer(raw: bytes) -> tuple[Any, ...]:
    """A sender's address as the socket module gives it, from its raw sockaddr."""
    family = int.from_bytes(raw[0:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    return (
        socket.inet_ntop(socket.AF_INET6, raw[8:24]), port,
        int.from_bytes(raw[4:8], "big"), int.from_bytes(raw[24:28], sys.byteorder),
    )


class BatchedUdp:
    """Answers the datagrams waiting on ``sock`` in batches; see the module docstring.

    The receive headers point at fixed slots (a buffer and an address each) and are
    never changed. A reply is written over its own query's slot, or an earlier one
    when a datagram before it got no reply, and the send headers, which point at the
    same slots, go out with one ``sendmmsg`` for the batch.
    """

    def __init__(
        self, sock: socket.socket, answer: Answer, dropped: dict[str, int],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        assert _CALLS is not None, "batching_available() says whether BatchedUdp can run"
        self._recvmmsg, self._sendmmsg = _CALLS
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._answer = answer
        self._dropped = dropped
        self._loop = loop
        # Anonymous memory: pages are touched only as datagrams need them. Slices of an
        # mmap are bytes at once (a memoryview's would cost a copy more).
        self._buffers = mmap.mmap(-1, BATCH * SLOT)
        self._names = mmap.mmap(-1, BATCH * NAME)
        namelen = 16 if sock.family == socket.AF_INET else 28  # the kernel keeps writing this
        buffers = ctypes.addressof(ctypes.c_char.from_buffer(self._buffers))
        names = ctypes.addressof(ctypes.c_char.from_buffer(self._names))
        self._in_iov = (_IoVec * BATCH)()
        self._out_iov = (_IoVec * BATCH)()
        self._in = (_MMsgHdr * BATCH)()
        self._out = (_MMsgHdr * BATCH)()
        for i in range(BATCH):
            self._in_iov[i].iov_base = self._out_iov[i].iov_base = buffers + i * SLOT
            self._in_iov[i].iov_len = SLOT
            for messages, iov in ((self._in, self._in_iov), (self._out, self._out_iov)):
                header = messages[i].msg_hdr
                header.msg_name = names + i * NAME
                header.msg_namelen = namelen
                header.msg_iov = ctypes.pointer(iov[i])
                header.msg_iovlen = 1
        self._in_address = ctypes.addressof(self._in)
        self._out_address = ctypes.addressof(self._out)
        # Fields read or written per datagram, as flat views (a ctypes field costs more)
        stride = ctypes.sizeof(_MMsgHdr) // 4
        self._lengths = memoryview(self._in).cast("B").cast("I")[_MMsgHdr.msg_len.offset // 4 :: stride]
        # iov_len is a size_t: an unsigned long on Linux, 32- and 64-bit alike
        self._out_lengths = memoryview(self._out_iov).cast("B").cast("L")[1::2]
        self._peers: dict[bytes, tuple[Any, ...]] = {}
        loop.add_reader(self._fd, self._readable)

    def get_extra_info(self, name: str) -> Any:
        """As a transport's, for ``sockname``."""
        return self._sock.getsockname() if name == "sockname" else None

    def close(self) -> None:
        """Stop reading and close the socket."""
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._fd)
            self._sock.close()

    def _readable(self) -> None:
        for _ in range(ROUNDS):
            received = self._recvmmsg(self._fd, self._in_address, BATCH, socket.MSG_DONTWAIT, None)
            if received <= 0:
                if received < 0 and ctypes.get_errno() not in (errno.EAGAIN, errno.EINTR):
                    log.debug("UDP receive error: %s", errno.errorcode.get(ctypes.get_errno()))
                return
            self._answer_batch(received)
            if received < BATCH:
                return

    def _answer_batch(self, received: int) -> None:
        data, names, lengths = self._buffers, self._names, self._lengths
        out_lengths, peers, answer = self._out_lengths, self._peers, self._answer
        replies = 0
        for i in range(received):
            raw = names[i * NAME : i * NAME + 28]
            peer = peers.get(raw)
            if peer is None:
                if len(peers) >= PEERS:
                    peers.clear()
                peer = peers[raw] = _peer(raw)
            start = i * SLOT
            reply = answer(data[start : start + lengths[i]], peer)
            if reply is None:
                continue
            if replies != i:  # an earlier datagram got no reply: close the gap
                names[replies * NAME : replies * NAME + 28] = raw
            size = len(reply)
            start = replies * SLOT
            data[start : start + size] = reply
            out_lengths[replies] = size
            replies += 1
        if replies:
            self._send(replies)

    def _send(self, count: int) -> None:
        sent = 0
        size = ctypes.sizeof(_MMsgHdr)
        while sent < count:
            done = self._sendmmsg(self._fd, self._out_address + sent * size, count - sent, 0)
            if done > 0:
                sent += done
                continue
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.ENOBUFS):
                # The send buffer is full: replies leave slower than queries come. Drop
                # rather than queue without bound; the resolver retries.
                self._dropped["busy"] += count - sent
                return
            if code != errno.EINTR:
                log.debug("UDP send error: %s", errno.errorcode.get(code))
                sent += 1  # that destination refused this one; the rest still go
