"""The sampled query log: one line for one query in ``every``, on logger ``gslb.query``.

    gslb serve --query-log 100     # one query in a hundred; 1 logs every query

A line says who asked what and what they got, and why it went there:

    query 198.51.100.7 port 41000 udp geo.gslb.example.com. A ecs 203.0.113.0/24
      -> NOERROR 192.0.2.10 192.0.2.11 service geo.gslb.example.com. pool europe scope /24 52us

With ``--log-format json`` the same facts are fields (``client``, ``transport``,
``qname``, ``qtype``, ``ecs``, ``rcode``, ``addresses``, ``service``, ``pools``,
``scope``, ``micros``). Sampling is by count, not by chance, so its cost is known: a
sampled query skips the response cache and takes the full path (tens of
microseconds); the others pay one integer decrement.
"""

from __future__ import annotations

import logging

from gslb.dns import wire
from gslb.engine.answer import Answer, Rcode
from gslb.model import RType

log = logging.getLogger("gslb.query")


class QueryLog:
    """Says which queries to log (one in ``every``) and writes their lines."""

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError("the query log samples one query in N, N >= 1")
        self.every = every
        self._countdown = 1  # the first query is logged: proof the log works

    def sample(self) -> bool:
        self._countdown -= 1
        if self._countdown:
            return False
        self._countdown = self.every
        return True

    def write(
        self,
        client: str,
        tcp: bool,
        query: wire.Query | None,
        result: Answer | None,
        reply: bytes | None,
        seconds: float,
    ) -> None:
        fields: dict[str, object] = {
            "client": client,
            "transport": "tcp" if tcp else "udp",
            "micros": round(seconds * 1e6),
            "rcode": Rcode.name_of(reply[3] & 0x0F) if reply and len(reply) > 3 else "none",
        }
        if query is None:
            log.info("query %s %s unparsed -> %s %dus", client, fields["transport"],
                     fields["rcode"], fields["micros"], extra=fields)
            return
        fields["qname"] = query.qname
        fields["qtype"] = RType.name_of(query.question.qtype)
        subnet = query.client
        if subnet is not None:
            fields["ecs"] = f"{subnet.address}/{subnet.source_prefix}"
        addresses: list[str] = []
        pools: list[str] = []
        if result is not None:
            addresses = [str(view.endpoint.address) for view in result.chosen]
            fields["addresses"] = addresses
            if result.service is not None:
                pools = sorted({view.pool.name for view in result.chosen})
                fields["service"] = result.service
                fields["pools"] = pools
            if subnet is not None:
                fields["scope"] = result.scope
        parts = [f"query {client} {fields['transport']} {fields['qname']} {fields['qtype']}"]
        if subnet is not None:
            parts.append(f"ecs {fields['ecs']}")
        parts.append(f"-> {fields['rcode']}")
        parts.extend(addresses)
        if "service" in fields:
            parts.append(f"service {fields['service']} pool {','.join(pools) or '-'}")
        if "scope" in fields:
            parts.append(f"scope /{fields['scope']}")
        parts.append(f"{fields['micros']}us")
        log.info("%s", " ".join(parts), extra=fields)
