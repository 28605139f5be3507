"""Step ``geo``: orders the pools for this client (it decides nothing alone).

A pool's rules and location come from the zone file::

    pools:
      eu-west:
        countries: [DE, FR]        # clients in these countries come here first
        continents: [EU]           # then clients of these continents
        location: {lat: 53.35, lon: -6.26}
        priority: 1

Pools rank by (rule: country match, then continent match, then none; priority tier;
great-circle distance from the client to the pool; order in the file). So a matching
rule wins, priority tiers order the rest, and within a tier the nearest pool comes
first. Without a GeoIP database or client coordinates, the order is the tiers'.
"""

from __future__ import annotations

import math

from gslb.engine.context import Context
from gslb.model import GeoInfo, Location, Pool
from gslb.snapshot import EndpointView

EARTH_RADIUS_KM = 6371.0


def distance_km(a: Location, b: Location) -> float:
    """Great-circle distance (haversine)."""
    lat1, lat2 = math.radians(a.latitude), math.radians(b.latitude)
    dlat = lat2 - lat1
    dlon = math.radians(b.longitude - a.longitude)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def pool_key(pool: Pool, index: int, geo: GeoInfo | None) -> tuple[float, ...]:
    rule = 2.0
    distance = math.inf
    if geo is not None:
        if geo.country is not None and geo.country in pool.countries:
            rule = 0.0
        elif geo.continent is not None and geo.continent in pool.continents:
            rule = 1.0
        if geo.location is not None and pool.location is not None:
            distance = distance_km(geo.location, pool.location)
    return (rule, float(pool.priority), distance, float(index))


def step(candidates: list[EndpointView], ctx: Context) -> list[EndpointView]:
    pools = ctx.service.service.pools
    geo_matters = len({c.pool.name for c in candidates}) > 1 and any(
        p.countries or p.continents or p.location for p in pools
    )
    geo = ctx.geo if geo_matters else None
    ctx.pool_order = {p.name: pool_key(p, i, geo) for i, p in enumerate(pools)}
    if geo is None:
        if not ctx.explain:
            return candidates
        if geo_matters:
            ctx.trace.append("geo: no GeoIP database; pools in tier order")
        elif candidates:
            ctx.trace.append(f"geo: only pool {candidates[0].pool.name} has candidates")
        return candidates
    ctx.depend(geo.prefix)  # a client elsewhere in the database network ranks the same
    if not ctx.explain:
        return sorted(candidates, key=lambda c: ctx.pool_order[c.pool.name])
    where = (
        f"{geo.country or '??'}/{geo.continent or '??'}"
        + (f" at {geo.location.latitude:.2f},{geo.location.longitude:.2f}" if geo.location else "")
        if geo.found else "unknown location"
    )
    ranked = sorted(pools, key=lambda p: ctx.pool_order[p.name])
    described = []
    for pool in ranked:
        rule, _, distance, _ = ctx.pool_order[pool.name]
        why = {0.0: "country rule", 1.0: "continent rule"}.get(rule, "")
        if not why and math.isfinite(distance):
            why = f"{distance:.0f} km"
        described.append(f"{pool.name} ({why or 'tier ' + str(pool.priority)})")
    ctx.trace.append(
        f"geo: client {ctx.client.address} in {where} (/{geo.prefix}); order: " + ", ".join(described)
    )
    return sorted(candidates, key=lambda c: ctx.pool_order[c.pool.name])
