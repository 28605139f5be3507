"""Heartbeat expiry: marks down the endpoints whose pushed heartbeats stopped.

Heartbeats themselves arrive through the API (``registry.heartbeat``); this loop only
lets time pass over them.
"""

from __future__ import annotations

import asyncio
import logging

from gslb.registry import Registry

log = logging.getLogger("gslb.health")


async def expire_heartbeats(registry: Registry, period: float = 0.5) -> None:
    """Call ``registry.expire_heartbeats()`` every ``period`` seconds until cancelled."""
    while True:
        try:
            registry.expire_heartbeats()
        except Exception:  # a registry bug must not stop expiry for good
            log.exception("heartbeat expiry failed")
        await asyncio.sleep(period)
