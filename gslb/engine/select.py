"""Step ``select``: pick ``answers`` endpoints among the chosen pool(s), by the service's policy.

    services:
      www:
        policy: sticky     # sticky | weighted | round_robin | least_loaded | fastest | fill
        answers: 2

- ``sticky``: a consistent hash ring of the client subnet (/24, /56) with virtual nodes in
  proportion to weight; an endpoint whose reported load is at or above its ``cap`` is
  skipped on the walk, so its subnets spread over the next endpoints (bounded loads).
- ``weighted``: weighted random, drawn from the query's ID, so it needs no process state.
- ``round_robin``: the endpoints rotated by the query's ID.
- ``least_loaded``: lowest ``load`` from heartbeats first (unknown counts as 0).
- ``fastest``: lowest health-check round-trip time first (unknown counts last).
- ``fill``: endpoints in declared order; each takes everything until its load reaches its
  ``cap``, then the next.

Ties in ``least_loaded`` and ``fastest`` keep the sticky order, so they stay sticky.
An endpoint's weight is multiplied by its pool's weight (both 100 by default), so pool
weights scale whole regions within a tier; endpoints of weight 0 are standby, used only
when no candidate has a weight.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from gslb.engine.context import Context, client_bucket, member_id
from gslb.engine.ring import Ring, hash_key, make_ring
from gslb.model import Policy
from gslb.snapshot import EndpointView, ServiceView


def member_weights(candidates: Sequence[EndpointView]) -> list[float]:
    """Relative weights: endpoint weight times pool weight, 1.0 for the defaults (100, 100).

    A member's weight never depends on the other members, which keeps the hash ring's
    promise that a change of members moves only that member's clients.
    """
    weights = [c.endpoint.weight * c.pool.weight / 10000 for c in candidates]
    if not any(weights):
        return [1.0] * len(candidates)
    return weights


def _ring(members: list[tuple[EndpointView, float]], ctx: Context) -> Ring:
    return _view_ring(members, ctx.service)


def _view_ring(members: list[tuple[EndpointView, float]], service: ServiceView) -> Ring:
    # Remembered on the service view by its endpoint views' identities: they live as long
    # as the view, and a ring's key of member names costs more to build than a lookup.
    key = ("ring", *[id(c) for c, _ in members])
    ring: Ring | None = service.memo.get(key)
    if ring is None:
        ring = service.memo[key] = make_ring(tuple((member_id(c), w) for c, w in members))
    return ring


def _full(view: EndpointView) -> bool:
    cap, load = view.endpoint.cap, view.health.load
    return cap is not None and load is not None and load >= cap


def _sticky_order(members: list[tuple[EndpointView, float]], ctx: Context) -> list[EndpointView]:
    key, prefix = client_bucket(ctx.client)
    ctx.depend(prefix)
    return [members[i][0] for i in _ring(members, ctx).walk(hash_key(key))]


def sticky(members: list[tuple[EndpointView, float]], ctx: Context) -> Iterator[EndpointView]:
    # Lazy: the step stops after ``answers`` picks, so the ring is walked only that far.
    key, prefix = client_bucket(ctx.client)
    ctx.depend(prefix)
    full = []
    any_open = False
    for i in _ring(members, ctx).walk(hash_key(key)):
        member = members[i][0]
        if _full(member):
            full.append(member)
        else:
            any_open = True
            yield member
    if not any_open:  # every one at its cap: they take clients all the same
        yield from full


def weighted(members: list[tuple[EndpointView, float]], ctx: Context) -> list[EndpointView]:
    draw = hash_key(ctx.draw().to_bytes(4, "big"))
    return [members[i][0] for i in _ring(members, ctx).walk(draw)]


def round_robin(members: list[tuple[EndpointView, float]], ctx: Context) -> list[EndpointView]:
    ordered = sorted((c for c, _ in members), key=member_id)
    start = ctx.draw() % len(ordered)
    return ordered[start:] + ordered[:start]


def least_loaded(members: list[tuple[EndpointView, float]], ctx: Context) -> list[EndpointView]:
    return sorted(_sticky_order(members, ctx), key=lambda c: c.health.load or 0.0)


def fastest(members: list[tuple[EndpointView, float]], ctx: Context) -> list[EndpointView]:
    return sorted(
        _sticky_order(members, ctx),
        key=lambda c: c.health.rtt if c.health.rtt is not None else math.inf,
    )


def fill(members: list[tuple[EndpointView, float]], ctx: Context) -> list[EndpointView]:
    declared = [c for c, _ in members]  # pool order from geo, then file/registration order
    open_ = [c for c in declared if not _full(c)]
    return open_ + [c for c in declared if _full(c)]


POLICIES: dict[Policy, Callable[[list[tuple[EndpointView, float]], Context], Iterable[EndpointView]]] = {
    Policy.STICKY: sticky,
    Policy.WEIGHTED: weighted,
    Policy.ROUND_ROBIN: round_robin,
    Policy.LEAST_LOADED: least_loaded,
    Policy.FASTEST: fastest,
    Policy.FILL: fill,
}


@dataclass(frozen=True, slots=True)
class StickyPlan:
    """What ``step`` under ``sticky`` needs besides the client, for one set of candidates.

    Built once per service view, type and client location (the chain remembers it), so
    a query only hashes its subnet and walks the ring: ``pick`` gives the indices into
    ``members`` that ``step`` would pick, in its order.
    """

    members: tuple[EndpointView, ...]
    ring: Ring
    open_: tuple[bool, ...]  # below its cap: the walk skips the others while any is open
    any_open: bool
    distinct: bool  # no address is held twice: no need to count an address once
    answers: int

    def pick(self, key: int) -> list[int]:
        answers, open_, any_open = self.answers, self.open_, self.any_open
        ring = self.ring
        if answers == 1:  # the first owner clockwise, when it may take the client
            points = ring.points
            first = ring.owners[bisect.bisect_right(points, key) % len(points)]
            if not any_open or open_[first]:
                return [first]
        picked: list[int] = []
        if self.distinct:
            for i in ring.walk(key):
                if not any_open or open_[i]:
                    picked.append(i)
                    if len(picked) == answers:
                        break
            return picked
        seen = set()
        for i in self.ring.walk(key):
            address = self.members[i].endpoint.address
            if (not any_open or open_[i]) and address not in seen:
                seen.add(address)
                picked.append(i)
                if len(picked) == answers:
                    break
        return picked


def sticky_plan(candidates: list[EndpointView], service: ServiceView) -> StickyPlan | None:
    """The plan for ``candidates`` when ``step`` would walk the sticky ring; else ``None``
    (another policy, or no choice to make)."""
    if service.service.policy is not Policy.STICKY:
        return None
    members = [(c, w) for c, w in zip(candidates, member_weights(candidates), strict=True) if w > 0]
    if len(members) <= 1:
        return None
    views = tuple(c for c, _ in members)
    open_ = tuple(not _full(c) for c in views)
    return StickyPlan(
        members=views,
        ring=_view_ring(members, service),
        open_=open_,
        any_open=any(open_),
        distinct=len({c.endpoint.address for c in views}) == len(views),
        answers=service.service.answers,
    )


def step(candidates: list[EndpointView], ctx: Context) -> list[EndpointView]:
    service = ctx.service.service
    members = [(c, w) for c, w in zip(candidates, member_weights(candidates), strict=True) if w > 0]
    if len(members) <= 1:
        if ctx.explain:
            ctx.trace.append(f"select: {len(members)} candidate(s), nothing to choose")
        return [c for c, _ in members]
    picked = []
    seen = set()
    for c in POLICIES[service.policy](members, ctx):  # an address held twice counts once
        if c.endpoint.address not in seen:
            seen.add(c.endpoint.address)
            picked.append(c)
            if len(picked) == service.answers:
                break
    if ctx.explain:
        ctx.trace.append(
            f"select: {service.policy.value} for {ctx.client.address} picked "
            + ", ".join(str(c.endpoint.address) for c in picked)
        )
    return picked
