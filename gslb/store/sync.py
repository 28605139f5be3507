"""Keeps this instance's registry in step with the shared Redis store.

Three tasks on the daemon's event loop:

- **listen**: redis-py's asyncio client subscribed to ``gslb:changes``. A message from
  another instance marks the state dirty; so does every (re)subscription, because
  messages published while disconnected are lost: a full resync then loses nothing.
- **resync**: while dirty, reads everything in one transaction (in a worker thread,
  with the synchronous client) and hands it to ``registry.apply_stored``, which changes
  and publishes only what differs. Messages that arrive during a resync coalesce into
  one more.
- **report**: shares this instance's probe verdicts when they change and refreshes them
  every ``period`` (a report older than ``gslb.health.quorum.FRESH`` no longer counts),
  then marks the state dirty so that the quorum is decided again as reports age.

When Redis is unreachable the registry keeps its last state and this instance's own
probes decide alone (the others' reports age out); ``status`` says so for ``/healthz``,
and the first resync after Redis returns brings everything back in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import redis
import redis.asyncio

from gslb.errors import StoreError
from gslb.model import EndpointRef
from gslb.registry import Registry
from gslb.store.contract import StoreStatus
from gslb.store.redis import CHANNEL, TIMEOUT, RedisStore

log = logging.getLogger("gslb.store")

PERIOD = 1.0  # seconds between refreshes of this instance's report (and resyncs)
MAX_BACKOFF = 2.0  # seconds between attempts to resubscribe, at most


class RedisSync:
    """Follows ``store`` into ``registry`` until cancelled (``run()``)."""

    def __init__(
        self,
        store: RedisStore,
        registry: Registry,
        *,
        period: float = PERIOD,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._registry = registry
        self._period = period
        self._clock = clock
        self._failures: dict[str, str] = {}  # task -> its latest error, while failing
        self._status = StoreStatus("redis", True, None, clock())
        self._dirty = asyncio.Event()
        self._verdicts = asyncio.Event()
        self.resyncs = 0  # completed resyncs, for tests and logs

    def status(self) -> StoreStatus:
        return self._status

    async def run(self) -> None:
        loop = asyncio.get_running_loop()

        def verdict_changed() -> None:  # from the health thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are stopping
                loop.call_soon_threadsafe(self._verdicts.set)

        self._registry.on_verdict(verdict_changed)
        self._dirty.set()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._listen(), name="redis listen")
            tasks.create_task(self._resync_forever(), name="redis resync")
            tasks.create_task(self._report_forever(), name="redis report")

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            client = redis.asyncio.Redis.from_url(
                self._store.url, socket_connect_timeout=TIMEOUT, health_check_interval=5,
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self._succeeded("listen")
                self._dirty.set()  # whatever was published while we were away
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(timeout=self._period)
                    if message is not None and message["data"] != self._store.instance.encode():
                        self._dirty.set()
            except (redis.RedisError, OSError) as exc:
                self._failed("listen", f"subscription lost: {exc or type(exc).__name__}")
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                with contextlib.suppress(redis.RedisError, OSError):
                    await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _resync_forever(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                applied = await asyncio.to_thread(self.resync)
            except StoreError as exc:
                self._failed("resync", str(exc))
            else:
                self._succeeded("resync")
                if not applied:
                    self._dirty.set()

    def resync(self) -> bool:
        """Read the shared state and apply it. Returns False when it was not applied
        because this instance wrote to the store meanwhile (the state read may lack that
        write, and this instance ignores its own notifications): try again."""
        writes = self._store.writes
        shared = self._store.load_shared()
        stale = False

        def wrote_since() -> bool:  # asked under the registry's lock
            nonlocal stale
            stale = self._store.writes != writes
            return stale

        self._registry.apply_stored(shared.state, shared.heartbeats, shared.reports,
                                    stale=wrote_since)
        self.resyncs += 1
        return not stale

    async def _report_forever(self) -> None:
        last: dict[EndpointRef, bool] | None = None
        while True:
            verdicts = self._registry.probe_verdicts()
            try:
                await asyncio.to_thread(self._store.save_report, verdicts, self._clock(),
                                        verdicts != last)
            except StoreError as exc:
                self._failed("report", str(exc))
            else:
                self._succeeded("report")
                last = dict(verdicts)
            self._dirty.set()  # reports age: decide the quorum again
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._period):
                    await self._verdicts.wait()
            self._verdicts.clear()

    def _failed(self, task: str, error: str) -> None:
        self._failures[task] = error
        if self._status.ok:
            log.error("shared store %s unreachable; serving the last state and this "
                      "instance's own checks: %s", self._store.where, error)
            self._status = StoreStatus("redis", False, error, self._clock())
        else:
            self._status = StoreStatus("redis", False, error, self._status.since)

    def _succeeded(self, task: str) -> None:
        self._failures.pop(task, None)
        if not self._status.ok and not self._failures:
            log.warning("shared store %s reachable again; resynced", self._store.where)
            self._status = StoreStatus("redis", True, None, self._clock())
