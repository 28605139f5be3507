"""Heartbeat and lease expiry: marks down the endpoints whose pushed heartbeats stopped,
and removes the registrations whose lease ran out.

Heartbeats themselves arrive through the API (``registry.heartbeat``); this loop only
lets time pass over them.
"""

from __future__ import annotations

import asyncio
import logging

from gslb.registry import Registry

log = logging.getLogger("gslb.health")


async def expire_heartbeats(registry: Registry, period: float = 0.5) -> None:
    """Call ``registry.expire_heartbeats()`` and ``registry.expire_leases()`` every
    ``period`` seconds until cancelled."""
    while True:
        try:
            registry.expire_heartbeats()
            registry.expire_leases()
        except Exception:  # a registry bug (or a store failure) must not stop expiry for good
            log.exception("heartbeat expiry failed")
        await asyncio.sleep(period)
