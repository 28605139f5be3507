"""Fuzz target: the whole datagram-to-reply path, ``DnsServer.respond``, under atheris.

    .venv/bin/python fuzz/respond.py -runs=100000          # or -max_total_time=60

Seeds are well-formed queries of every kind (tests/dnsmutations.py); libFuzzer mutates
them, with a dictionary of DNS wire tokens (compression pointers, OPT and ECS headers).
An input fails when an unexpected exception reaches the SERVFAIL handler (it is logged),
when a reply does not parse, or does not answer the query's ID, or is too big for UDP.
``tests/test_fuzz.py`` runs it in ``make test``.
"""

from __future__ import annotations

import logging
import struct
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

with atheris.instrument_imports(include=["gslb"]):  # our code's branches guide the fuzzer
    from gslb.dns import wire
    from gslb.dns.server import DnsServer

import dns.message  # noqa: E402 - the reference parser
from dnsfixtures import make_snapshot  # noqa: E402
from dnsmutations import seed_queries  # noqa: E402

TOKENS = [b"\xc0\x0c", b"\xc0\x00", b"\xc0\xff", b"\x3f", b"\x00\x00\x29\x04\xd0",
          b"\x00\x29", b"\x00\x08\x00\x07\x00\x01\x18\x00", b"\x00\x08", b"\x00\x01\x00\x01",
          b"\x00\x06\x00\x01", b"\x00\xff\x00\x01", b"\x80\x00", b"\x01\x00\x00\x01"]


class _Escaped(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError(f"escaped to SERVFAIL: {record.getMessage()}") from (
            record.exc_info[1] if record.exc_info else None)


SNAPSHOT = make_snapshot()
SERVER = DnsServer(lambda: SNAPSHOT)
SOURCE = ("192.0.2.1", 40000)


def test_one_input(data: bytes) -> None:
    tcp = bool(data) and data[-1] & 1 == 1  # one input bit decides the transport
    reply = SERVER.respond(data, SOURCE, tcp=tcp)
    if reply is None:
        if len(data) >= 12 and not data[2] & 0x80:
            raise AssertionError("a query with a header got no reply")
        return
    message = dns.message.from_wire(reply)
    if message.id != struct.unpack("!H", data[:2])[0]:
        raise AssertionError("reply ID differs")
    if not tcp and len(reply) > (wire.MAX_UDP_PAYLOAD if message.edns >= 0 else 512):
        raise AssertionError(f"UDP reply of {len(reply)} bytes")


def main() -> None:
    logging.getLogger("gslb.dns").addHandler(_Escaped())
    logging.getLogger("gslb.dns").propagate = False
    args = list(sys.argv)
    with tempfile.TemporaryDirectory() as work:
        corpus = Path(work, "corpus")
        corpus.mkdir()
        for index, seed in enumerate(seed_queries()):
            (corpus / f"seed-{index}").write_bytes(seed)
        dictionary = Path(work, "dns.dict")
        dictionary.write_text("".join(
            '"' + "".join(f"\\x{b:02x}" for b in token) + '"\n' for token in TOKENS))
        atheris.Setup([*args, f"-dict={dictionary}", str(corpus)], test_one_input)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
