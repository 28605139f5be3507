"""Step ``healthy``: endpoints that are up, not draining and enabled.

When none is, the service's ``all_down`` decides::

    services:
      www:
        all_down: open      # every enabled endpoint (default): something beats nothing
        # all_down: closed  # NODATA
        # all_down: last_good  # the endpoints that were healthy last (open if none ever was)

Under ``closed`` and ``last_good`` an endpoint counts as healthy only once a check or a
heartbeat has confirmed it: after a start, ``closed`` answers NODATA until the first
verdicts, and ``last_good``, having no last good set yet, answers every enabled endpoint.
"""

from __future__ import annotations

from gslb.engine.context import Context
from gslb.model import AdminState, AllDown, CheckKind
from gslb.snapshot import EndpointView


def step(candidates: list[EndpointView], ctx: Context) -> list[EndpointView]:
    mode = ctx.service.service.all_down
    service = ctx.service.service
    # With no probe and no heartbeats no verdict ever comes: such endpoints are confirmed.
    serving = [
        c for c in candidates
        if c.health.serving and (
            c.health.confirmed
            or mode is AllDown.OPEN
            or (service.check_of(c.endpoint).kind is CheckKind.NONE
                and c.endpoint.heartbeat_timeout is None)
        )
    ]
    if serving or not candidates:
        if ctx.explain:
            ctx.trace.append(f"healthy: {len(serving)} of {len(candidates)} serving")
        return serving
    enabled = [c for c in candidates if c.health.admin is not AdminState.DISABLED]
    if mode is AllDown.CLOSED:
        ctx.trace.append("healthy: none serving; all_down is closed: no answer")
        return []
    if mode is AllDown.LAST_GOOD:
        last = ctx.service.last_good
        good = [c for c in enabled
                if (c.pool.name, c.endpoint.address, c.endpoint.port) in last]
        if good:
            ctx.trace.append(f"healthy: none serving; answering the {len(good)} last good")
            return good
    ctx.trace.append(f"healthy: none serving, failing open to {len(enabled)} enabled endpoints")
    return enabled
