"""Step ``failover``: the first pool in the geo order that still has candidates.

Pools that rank the same (same rule, tier and distance, as for clients of unknown
location) are taken together, their endpoints weighted by pool weight. Pools ranked
before the chosen one are named in the trace as skipped: they have no healthy endpoint.
"""

from __future__ import annotations

from gslb.engine.context import Context
from gslb.snapshot import EndpointView


def step(candidates: list[EndpointView], ctx: Context) -> list[EndpointView]:
    if not candidates:
        return candidates
    order = ctx.pool_order

    def rank(name: str) -> tuple[float, ...]:
        return order[name][:3] if name in order else (2.0, 0.0, 0.0)

    best = min(rank(c.pool.name) for c in candidates)
    kept = [c for c in candidates if rank(c.pool.name) == best]
    if not ctx.explain:
        return kept
    chosen = sorted({c.pool.name for c in kept})
    skipped = [p.name for p in ctx.service.service.pools
               if p.name in order and rank(p.name) < best]
    line = f"failover: pool {', '.join(chosen)}"
    if skipped:
        line += f" (skipped, no healthy endpoint: {', '.join(skipped)})"
    ctx.trace.append(line)
    return kept
