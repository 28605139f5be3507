"""Step ``family``: only endpoints of the query's address family (A: IPv4, AAAA: IPv6).

No configuration: a service answers AAAA when it has IPv6 endpoints, NODATA otherwise.
"""

from __future__ import annotations

from gslb.engine.context import Context
from gslb.model import RType
from gslb.snapshot import EndpointView


def step(candidates: list[EndpointView], ctx: Context) -> list[EndpointView]:
    version = 4 if ctx.qtype is RType.A else 6
    kept = [c for c in candidates if c.endpoint.address.version == version]
    if ctx.explain:
        ctx.trace.append(f"family: {len(kept)} of {len(candidates)} endpoints are IPv{version}")
    return kept
