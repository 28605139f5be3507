"""DNS wire format for the front: queries in, answers out (RFC 1035, 6891, 7871).

``parse_query`` reads a datagram into a :class:`Query` for the engine, or decides
the reply on its own (FORMERR, NOTIMP, REFUSED, BADVERS as packed bytes; ``None``
to stay silent). ``pack_answer`` writes an engine :class:`Answer` back.

Queries are read by a small strict parser rather than ``dnslib.DNSRecord.parse``:
that one decodes every record's RDATA, rejects non-UTF-8 labels, drops a
zero-length last EDNS option and follows compression pointers by recursion, all of
which a query path that is also a fuzz target cannot afford. Responses are packed
with dnslib's buffer and RDATA classes (name compression).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from dnslib import CNAME, MX, NS, RD, SOA, TXT, DNSBuffer, DNSLabel

from gslb.engine.answer import Answer, Rcode
from gslb.engine.context import ECS_MAX_PREFIX_V4, ECS_MAX_PREFIX_V6, Client
from gslb.model import (
    AddressData,
    HINFOData,
    IPAddress,
    MXData,
    NameData,
    RData,
    Record,
    RType,
    SOAData,
    TXTData,
)

MIN_UDP_PAYLOAD = 512  # RFC 1035, and the floor for smaller EDNS advertisements
MAX_UDP_PAYLOAD = 1232  # what we advertise and send at most: no IP fragmentation
MAX_TCP_MESSAGE = 65535
MAX_NAME_WIRE = 255

ECS_OPTION = 8

OPCODE_QUERY = 0
CLASS_IN = 1
TYPE_OPT = 41
NOT_IMPLEMENTED_TYPES = frozenset({249, 250, 251, 252})  # TKEY, TSIG, IXFR, AXFR

QR = 0x8000
OPCODE_MASK = 0x7800
AA = 0x0400
TC = 0x0200
RD_FLAG = 0x0100
CD = 0x0010
DO = 0x8000  # in the OPT TTL's flags half

_HEADER = struct.Struct("!HHHHHH")
_U16 = struct.Struct("!H")
_U16X2 = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_OPT_HEAD = struct.Struct("!BHHIH")  # root name, type, payload size, ttl, rdlength
_OPT_ECS_HEAD = struct.Struct("!BHHIHHHHBB")  # and an ECS option: code, length, family, prefixes

_RTYPES = {rtype.value: rtype for rtype in RType}

# Label bytes that appear as themselves in a name's text form; others are \DDD.
_PLAIN = bytes(c for c in range(0x21, 0x7F) if c not in b".\\")


class _Malformed(Exception):
    """The query cannot be parsed."""


class _BadOption(_Malformed):
    """An option of the OPT record is malformed: the FORMERR carries an OPT record, so
    that the requester can tell an EDNS error from a server without EDNS (RFC 6891
    section 7)."""

    def __init__(self, edns: Edns) -> None:
        super().__init__()
        self.edns = edns


class _Names(dict[tuple[bytes, ...], int]):
    """dnslib's compression table, minus offsets a 14-bit pointer cannot reach."""

    def __setitem__(self, key: tuple[bytes, ...], offset: int) -> None:
        if offset <= 0x3FFF:
            super().__setitem__(key, offset)


Sections = tuple[tuple[Record, ...], tuple[Record, ...], tuple[Record, ...]]
"""Answer, authority and additional records."""


# The values of one query (ClientSubnet, Edns, Query) are built for every query and
# only read after: plain slots classes, since a frozen dataclass's checked attribute
# setting makes each construction about 5 times as costly (BENCHMARKS.md). A Question
# is shared by the queries that spell it alike, and frozen.


@dataclass(frozen=True, slots=True)
class Question:
    """The question as received: labels keep their letter case and bytes. Frozen: the
    lean reader hands the same one to every query that spells it alike."""

    labels: tuple[bytes, ...]
    qtype: int
    qclass: int
    # its wire form as received when that held no compression: what the reply repeats
    wire: bytes | None = field(default=None, compare=False)


@dataclass(slots=True)
class ClientSubnet:
    """An EDNS Client Subnet option (RFC 7871) as received, and the client it names."""

    family: int
    source_prefix: int
    address: bytes  # exactly ceil(source_prefix / 8) octets, as received
    client: Client  # masked to at most /24 or /56


@dataclass(slots=True)
class Edns:
    payload: int  # the requester's UDP payload size, as advertised
    do: bool
    version: int = 0
    subnet: ClientSubnet | None = None

    @property
    def udp_limit(self) -> int:
        return max(MIN_UDP_PAYLOAD, min(self.payload, MAX_UDP_PAYLOAD))


@dataclass(slots=True)
class Query:
    """A query the engine can answer."""

    id: int
    flags: int  # header flags word as received
    question: Question
    qname: str  # lower-cased, absolute, with the trailing dot: the engine's form
    rtype: RType | None  # None: a type we hold no data of (answered as such)
    edns: Edns | None

    @property
    def client(self) -> Client | None:
        """The ECS client, when the query named one."""
        return self.edns.subnet.client if self.edns and self.edns.subnet else None

    @property
    def udp_limit(self) -> int:
        return self.edns.udp_limit if self.edns else MIN_UDP_PAYLOAD


@dataclass(frozen=True, slots=True)
class _Message:
    """What a query's sections held, before deciding anything."""

    questions: tuple[Question, ...]
    edns: Edns | None


# --- queries -----------------------------------------------------------------------


def parse_query(data: bytes) -> Query | bytes | None:
    """Read a query datagram: a :class:`Query`, a reply that needs no engine, or ``None``.

    ``None`` (no reply): fewer than 12 bytes (no header to answer with), or the QR
    bit is set (a response: answering it could start a loop between two servers).

    Replies decided here:

    - FORMERR: the message cannot be parsed (trailing bytes included), QDCOUNT is
      not 1, more than one OPT record, an OPT record outside the additional section
      or not owned by the root, a malformed Client Subnet option (or option framing:
      the reply then carries an OPT record, RFC 6891 section 7), or a question for
      type OPT;
    - NOTIMP: an opcode other than QUERY, or a zone transfer or key/signature type
      (AXFR, IXFR, TKEY, TSIG) as the question type;
    - BADVERS: an OPT record of version above 0 (RFC 6891 section 6.1.3);
    - REFUSED: a question class other than IN. We serve only IN data; CHAOS
      questions such as ``version.bind`` get no special answer.

    What resolvers send is read by a lean reader (``_parse_common``); it declines
    anything else, which the full parser reads and decides on.
    """
    common = _parse_common(data)
    return common if common is not None else _parse_full(data)


def _parse_full(data: bytes) -> Query | bytes | None:
    """``parse_query`` for every datagram, the unusual ones included."""
    if len(data) < 12:
        return None
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & QR:
        return None
    try:
        message = _read_message(data, qdcount, ancount, nscount, arcount)
    except _BadOption as exc:
        return pack_reply(qid, flags, Rcode.FORMERR, None, edns=exc.edns)
    except _Malformed:
        rcode = Rcode.NOTIMP if _opcode(flags) != OPCODE_QUERY else Rcode.FORMERR
        return _pack_bare(qid, flags, rcode)

    edns = message.edns
    if _opcode(flags) != OPCODE_QUERY:
        return pack_reply(qid, flags, Rcode.NOTIMP, None, edns=edns)
    if edns is not None and edns.version > 0:
        question = message.questions[0] if len(message.questions) == 1 else None
        return pack_reply(qid, flags, Rcode.BADVERS, question, edns=edns)
    if len(message.questions) != 1:
        return pack_reply(qid, flags, Rcode.FORMERR, None, edns=edns)
    question = message.questions[0]
    if question.qclass != CLASS_IN:
        return pack_reply(qid, flags, Rcode.REFUSED, question, edns=edns)
    if question.qtype == TYPE_OPT:
        return pack_reply(qid, flags, Rcode.FORMERR, question, edns=edns)
    if question.qtype in NOT_IMPLEMENTED_TYPES:
        return pack_reply(qid, flags, Rcode.NOTIMP, question, edns=edns)
    return Query(
        id=qid,
        flags=flags,
        question=question,
        qname=name_to_text(question.labels),
        rtype=_RTYPES.get(question.qtype),
        edns=edns,
    )


_ECS_V4 = 1
_ECS_V6 = 2


def _parse_common(data: bytes) -> Query | None:
    """The common query, read fast: ``parse_query``'s :class:`Query` for it, or ``None``
    for anything else, which the full parser then decides on.

    Common is: a QUERY without QR, one question (uncompressed, non-root name of plain
    label bytes, class IN, a type with no special rule) and nothing else but at most an
    OPT record of version 0 that holds a well-formed Client Subnet option at most once
    and any other options (ignored, as the full parser does). What resolvers send.
    """
    size = len(data)
    if size < 17:
        return None
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & (QR | OPCODE_MASK) or qdcount != 1 or ancount or nscount or arcount > 1:
        return None
    # A common name holds no zero byte: it ends at the first one after the header.
    offset = data.find(0, 12) + 5
    if offset <= 16 or offset > size:
        return None
    asked = _common_question(data[12:offset])
    if asked is None:
        return None
    edns = None
    if arcount:
        if offset + 11 > size or data[offset] != 0:
            return None
        rtype, payload, ttl, rdlength = _RR_FIXED.unpack_from(data, offset + 1)
        offset += 11
        if rtype != TYPE_OPT or ttl & 0xFF0000 or offset + rdlength != size:
            return None  # not an OPT, version above 0 (BADVERS), or not the end
        subnet = None
        while offset < size:
            if offset + 4 > size:
                return None
            code, length = _U16X2.unpack_from(data, offset)
            offset += 4
            if offset + length > size:
                return None
            if code == ECS_OPTION:
                if subnet is not None:
                    return None
                subnet = _common_subnet(data, offset, offset + length)
                if subnet is None:
                    return None
            offset += length
        edns = Edns(payload, bool(ttl & DO), 0, subnet)
    elif offset != size:
        return None
    return Query(qid, flags, asked[0], asked[1], asked[2], edns)


@functools.lru_cache(maxsize=4096)
def _common_question(wire: bytes) -> tuple[Question, str, RType | None] | None:
    """The question, the engine's spelling of its name and its type, for a question's
    wire form (name, type, class) when it is common: a common name, class IN, a type
    with no special rule. Remembered per spelling: a GSLB is asked few names."""
    name = _common_name(wire[:-4])
    if name is None:
        return None
    qtype, qclass = _U16X2.unpack_from(wire, len(wire) - 4)
    if qclass != CLASS_IN or qtype == TYPE_OPT or qtype in NOT_IMPLEMENTED_TYPES:
        return None
    return Question(name[0], qtype, qclass, wire), name[1], _RTYPES.get(qtype)


def _common_name(wire: bytes) -> tuple[tuple[bytes, ...], str] | None:
    """The labels and the engine's spelling of a name's wire form (up to its final zero),
    when it is common: not the root, uncompressed, of plain label bytes."""
    labels = []
    offset = 0
    end = len(wire) - 1
    length = wire[0]
    if not length or end + 1 > MAX_NAME_WIRE:
        return None  # the root: rare, and not packed by hand
    while length:
        if length > 63:
            return None  # a compression pointer or an extended label type
        start = offset + 1
        offset = start + length
        if offset > end:
            return None  # a zero byte inside a label
        labels.append(wire[start:offset])
        length = wire[offset]
    if offset != end:
        return None
    joined = b".".join(labels)
    if joined.translate(None, _PLAIN) != b"." * (len(labels) - 1):
        return None  # a label byte that needs an escape in text: name_to_text's way
    return tuple(labels), joined.lower().decode("ascii") + "."


_V4_MASKS = tuple((0xFFFFFFFF << (32 - used)) & 0xFFFFFFFF for used in range(33))
_V6_MASKS = tuple(((1 << 128) - 1) ^ ((1 << (128 - used)) - 1) for used in range(129))


def _common_subnet(data: bytes, start: int, end: int) -> ClientSubnet | None:
    """``_read_subnet``'s result for a well-formed option at ``data[start:end]``, else ``None``."""
    if end - start < 4 or data[start]:
        return None
    family, source = data[start + 1], data[start + 2]
    address = data[start + 4 : end]
    if len(address) != (source + 7) >> 3:
        return None
    if source & 7 and address[-1] & (0xFF >> (source & 7)):
        return None
    if family == _ECS_V4:
        if source > 32:
            return None
        used = source if source < ECS_MAX_PREFIX_V4 else ECS_MAX_PREFIX_V4
        value = int.from_bytes(address, "big") << ((4 - len(address)) << 3)
        client_address: IPAddress = IPv4Address(value & _V4_MASKS[used])
    elif family == _ECS_V6:
        if source > 128:
            return None
        used = source if source < ECS_MAX_PREFIX_V6 else ECS_MAX_PREFIX_V6
        value = int.from_bytes(address, "big") << ((16 - len(address)) << 3)
        client_address = IPv6Address(value & _V6_MASKS[used])
    else:
        return None
    return ClientSubnet(family, source, address, Client(client_address, used))


def _opcode(flags: int) -> int:
    return (flags & OPCODE_MASK) >> 11


def _read_message(
    data: bytes, qdcount: int, ancount: int, nscount: int, arcount: int
) -> _Message:
    offset = 12
    questions = []
    for _ in range(qdcount):
        labels, offset = _read_name(data, offset)
        if offset + 4 > len(data):
            raise _Malformed
        qtype, qclass = _U16X2.unpack_from(data, offset)
        offset += 4
        questions.append(Question(labels, qtype, qclass))

    edns: Edns | None = None
    for section, count in enumerate((ancount, nscount, arcount)):
        for _ in range(count):
            start = offset
            offset = _skip_name(data, offset)
            if offset + 10 > len(data):
                raise _Malformed
            rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, offset)
            offset += 10
            end = offset + rdlength
            if end > len(data):
                raise _Malformed
            if rtype == TYPE_OPT:
                # RFC 6891 section 6.1.1: one OPT, in the additional section, owned by root
                if section != 2 or edns is not None or data[start] != 0:
                    raise _Malformed
                edns = _read_opt(data, offset, end, rclass, ttl)
            offset = end
    if offset != len(data):
        raise _Malformed
    return _Message(tuple(questions), edns)


def _read_name(data: bytes, offset: int) -> tuple[tuple[bytes, ...], int]:
    """The labels of the name at ``offset`` and the offset just after it."""
    labels = []
    wire_length = 1
    end = -1  # where the name ends in the message, once a pointer was followed
    limit = offset  # compression pointers must point strictly backwards
    while True:
        if offset >= len(data):
            raise _Malformed
        length = data[offset]
        if length == 0:
            offset += 1
            break
        if length >= 0xC0:
            if offset + 1 >= len(data):
                raise _Malformed
            target = ((length & 0x3F) << 8) | data[offset + 1]
            if end < 0:
                end = offset + 2
            if target < 12 or target >= limit:
                raise _Malformed
            offset = limit = target
            continue
        if length > 63:  # 0x40 and 0x80: extended label types, never deployed
            raise _Malformed
        wire_length += length + 1
        if wire_length > MAX_NAME_WIRE or offset + 1 + length > len(data):
            raise _Malformed
        labels.append(data[offset + 1 : offset + 1 + length])
        offset += 1 + length
    return tuple(labels), (end if end >= 0 else offset)


def _skip_name(data: bytes, offset: int) -> int:
    """The offset after the name at ``offset``; only its framing is checked."""
    while True:
        if offset >= len(data):
            raise _Malformed
        length = data[offset]
        if length == 0:
            return offset + 1
        if length >= 0xC0:
            return offset + 2
        if length > 63:
            raise _Malformed
        offset += 1 + length


def _read_opt(data: bytes, offset: int, end: int, payload: int, ttl: int) -> Edns:
    version = (ttl >> 16) & 0xFF
    do = bool(ttl & DO)
    subnet: ClientSubnet | None = None
    try:
        while offset < end:
            if offset + 4 > end:
                raise _Malformed
            code, length = _U16X2.unpack_from(data, offset)
            offset += 4
            if offset + length > end:
                raise _Malformed
            if code == ECS_OPTION and version == 0:
                if subnet is not None:
                    raise _Malformed
                subnet = _read_subnet(data[offset : offset + length])
            offset += length  # other options are ignored (RFC 6891 section 6.1.2)
    except _Malformed:
        raise _BadOption(Edns(payload=payload, do=do, version=version)) from None
    return Edns(payload=payload, do=do, version=version, subnet=subnet)


def _read_subnet(option: bytes) -> ClientSubnet:
    """RFC 7871 section 6; a SCOPE PREFIX-LENGTH other than 0 in a query is ignored."""
    if len(option) < 4:
        raise _Malformed
    family, source = _U16.unpack_from(option)[0], option[2]
    address = option[4:]
    if family == 1:
        bits, cap = 32, ECS_MAX_PREFIX_V4
    elif family == 2:
        bits, cap = 128, ECS_MAX_PREFIX_V6
    else:
        raise _Malformed
    if source > bits or len(address) != (source + 7) // 8:
        raise _Malformed
    if source % 8 and address[-1] & (0xFF >> (source % 8)):
        raise _Malformed  # bits beyond the source prefix must be zero
    used = min(source, cap)
    value = int.from_bytes(address.ljust(bits // 8, b"\0"), "big")
    value &= ((1 << bits) - 1) ^ ((1 << (bits - used)) - 1)
    client_address = IPv4Address(value) if family == 1 else IPv6Address(value)
    return ClientSubnet(family, source, bytes(address), Client(client_address, used))


def name_to_text(labels: tuple[bytes, ...]) -> str:
    """A wire name as the engine spells names: lower-cased, absolute, ``\\DDD`` escapes."""
    if not labels:
        return "."
    if not b"".join(labels).translate(None, _PLAIN):
        return b".".join(labels).lower().decode("ascii") + "."
    return ".".join(_label_text(label.lower()) for label in labels) + "."


def _label_text(label: bytes) -> str:
    return "".join(chr(c) if c in _PLAIN else f"\\{c:03d}" for c in label)


# --- responses ---------------------------------------------------------------------


def pack_answer(query: Query, answer: Answer, tcp: bool) -> bytes:
    """The response to ``query``, no larger than its transport allows.

    When the answer does not fit, the additional section goes first (it only saves
    the resolver a query, RFC 2181 section 9); when it still does not fit, TC is set
    and every section but the question and OPT is emptied, never a partial RRset.
    """
    edns = query.edns
    if tcp:
        limit = MAX_TCP_MESSAGE
    elif edns is None:
        limit = MIN_UDP_PAYLOAD
    else:
        limit = max(MIN_UDP_PAYLOAD, min(edns.payload, MAX_UDP_PAYLOAD))  # Edns.udp_limit, inline
    fast = _pack_addresses(query, answer, limit)
    if fast is not None:
        return fast
    return pack_reply(
        query.id,
        query.flags,
        answer.rcode,
        query.question,
        authoritative=answer.authoritative,
        sections=(answer.answer, answer.authority, answer.additional),
        qname=query.qname,
        edns=query.edns,
        scope=answer.scope,
        limit=limit,
    )


# --- the common answer, packed by hand ------------------------------------------------

_ADDRESS_RR = struct.Struct("!HHHIH")  # pointer to the question name, type, class, ttl, rdlength
_QUESTION_POINTER = 0xC000 | 12


def _pack_addresses(query: Query, answer: Answer, limit: int) -> bytes | None:
    """The reply ``pack_reply`` would give for an answer of only A/AAAA records owned by
    the question name (what services answer), in a fraction of its time; ``None`` for
    any other answer. Every record's owner is a pointer to the question."""
    records = answer.answer
    if not records or answer.authority or answer.additional:
        return None
    asked = query.question
    question = asked.wire or _question_wire(asked.labels, asked.qtype, asked.qclass)
    if question is None:
        return None
    qname = query.qname
    body = []
    for record in records:
        data = record.data
        if record.name != qname or not isinstance(data, AddressData):
            return None
        rdata = data.packed
        body.append(_ADDRESS_RR.pack(_QUESTION_POINTER, record.rtype, CLASS_IN, record.ttl, len(rdata)))
        body.append(rdata)
    flags = QR | (query.flags & (OPCODE_MASK | RD_FLAG | CD)) | (answer.rcode & 0xF)
    if answer.authoritative:
        flags |= AA
    edns = query.edns
    opt = _opt(edns, answer.rcode, answer.scope) if edns is not None else b""
    answers = b"".join(body)
    count = len(records)
    if 12 + len(question) + len(answers) + len(opt) > limit:
        flags |= TC
        answers, count = b"", 0
    header = _HEADER.pack(query.id, flags, 1, count, 0, 1 if opt else 0)
    return header + question + answers + opt


@functools.lru_cache(maxsize=4096)
def _question_wire(labels: tuple[bytes, ...], qtype: int, qclass: int) -> bytes | None:
    """A question's wire form (name uncompressed), remembered: a GSLB is asked few names.
    ``None`` for the root and for names dnslib refuses, which ``pack_reply`` packs."""
    if not labels or len(b".".join(labels)) > 253:
        return None
    name = b"".join(bytes((len(label),)) + label for label in labels) + b"\0"
    return name + _U16X2.pack(qtype, qclass)


def pack_reply(
    qid: int,
    query_flags: int,
    rcode: Rcode,
    question: Question | None,
    *,
    authoritative: bool = False,
    sections: Sections = ((), (), ()),
    qname: str = "",
    edns: Edns | None = None,
    scope: int = 0,
    limit: int = MIN_UDP_PAYLOAD,
) -> bytes:
    """Pack a response. Records owned by ``qname`` are written with the question's
    spelling of it; an OPT record is added when the query had one."""
    flags = QR | (query_flags & (OPCODE_MASK | RD_FLAG | CD)) | (rcode & 0xF)
    if authoritative:
        flags |= AA
    opt = _opt(edns, rcode, scope) if edns is not None else b""

    buffer = DNSBuffer()
    buffer.names = _Names()
    buffer.pack("!HHHHHH", qid, flags, 0, 0, 0, 0)
    question_label: DNSLabel | None = None
    if question is not None:
        question_label = DNSLabel(question.labels)
        buffer.encode_name(question_label)
        buffer.pack("!HH", question.qtype, question.qclass)
    question_end = len(buffer.data)

    counts = [1 if question is not None else 0, 0, 0, 0]
    ends = []
    for index, records in enumerate(sections):
        for record in records:
            owner = question_label if record.name == qname else _label(record.name)
            _pack_record(buffer, owner, record)
        counts[index + 1] = len(records)
        ends.append(len(buffer.data))

    if ends[-1] + len(opt) > limit:
        if ends[1] + len(opt) <= limit:
            cut = ends[1]
            counts[3] = 0
        else:
            cut = question_end
            counts[1:] = [0, 0, 0]
            flags |= TC
        del buffer.data[cut:]
        buffer.offset = cut
    if opt:
        buffer.append(opt)
        counts[3] += 1
    buffer.update(0, "!HHHHHH", qid, flags, *counts)
    return bytes(buffer.data)


def _pack_bare(qid: int, query_flags: int, rcode: Rcode) -> bytes:
    flags = QR | (query_flags & (OPCODE_MASK | RD_FLAG | CD)) | (rcode & 0xF)
    return _HEADER.pack(qid, flags, 0, 0, 0, 0)


def servfail(data: bytes) -> bytes | None:
    """A bare SERVFAIL for a datagram that failed unexpectedly; ``None`` without a header."""
    if len(data) < 12:
        return None
    qid, flags = _U16X2.unpack_from(data)
    if flags & QR:
        return None
    return _pack_bare(qid, flags, Rcode.SERVFAIL)


def _opt(edns: Edns, rcode: Rcode, scope: int) -> bytes:
    """Our OPT record: version 0, DO echoed, other flags clear; ECS echoed, nothing else."""
    ttl = ((rcode >> 4) & 0xFF) << 24 | (DO if edns.do else 0)
    subnet = edns.subnet
    if subnet is None:
        return _OPT_HEAD.pack(0, TYPE_OPT, MAX_UDP_PAYLOAD, ttl, 0)
    address = subnet.address
    source = subnet.source_prefix
    return _OPT_ECS_HEAD.pack(
        0, TYPE_OPT, MAX_UDP_PAYLOAD, ttl, 8 + len(address), ECS_OPTION, 4 + len(address),
        subnet.family, source, scope,
    ) + address


def _pack_record(buffer: DNSBuffer, owner: DNSLabel, record: Record) -> None:
    buffer.encode_name(owner)
    buffer.pack("!HHIH", record.rtype, CLASS_IN, record.ttl, 0)
    start = len(buffer.data)
    _rdata(record.rtype, record.data).pack(buffer)
    buffer.update(start - 2, "!H", len(buffer.data) - start)


@functools.lru_cache(maxsize=8192)
def _label(name: str) -> DNSLabel:
    if name == ".":
        return DNSLabel(())
    return DNSLabel(tuple(label.encode("ascii") for label in name.rstrip(".").split(".")))


@functools.lru_cache(maxsize=16384)
def _rdata(rtype: RType, data: RData) -> RD:
    """dnslib RDATA for a record's data (cached: records are frozen)."""
    if isinstance(data, AddressData):
        return RD(data.address.packed)
    if isinstance(data, NameData):
        return (CNAME if rtype is RType.CNAME else NS)(_label(data.target))
    if isinstance(data, MXData):
        return MX(_label(data.exchange), data.preference)
    if isinstance(data, SOAData):
        times = (data.serial, data.refresh, data.retry, data.expire, data.minimum)
        return SOA(_label(data.mname), _label(data.rname), times)
    if isinstance(data, TXTData):
        return TXT(list(data.strings))
    if isinstance(data, HINFOData):
        return RD(b"".join(_character_string(text) for text in (data.cpu, data.os)))
    raise TypeError(f"no wire form for {type(data).__name__}")


def _character_string(text: str) -> bytes:
    raw = text.encode("utf-8")[:255]
    return bytes([len(raw)]) + raw
