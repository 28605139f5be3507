"""A thread with its own event loop for the prober and heartbeat expiry.

DNS load saturating the main loop must not delay checks (late checks time out and mark
endpoints down falsely), so health work never shares the DNS loop. It reports to the
registry, which is safe to write from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from types import TracebackType

from gslb.health.heartbeat import expire_heartbeats
from gslb.health.prober import MAX_CONCURRENT, CheckObserver, Prober
from gslb.registry import Registry

log = logging.getLogger("gslb.health")


class HealthThread:
    """Runs ``Prober(registry).run()`` and ``expire_heartbeats(registry)`` until stopped."""

    def __init__(
        self,
        registry: Registry,
        *,
        max_concurrent: int = MAX_CONCURRENT,
        heartbeat_period: float = 0.5,
        name: str = "gslb-health",
        on_check: CheckObserver | None = None,
    ) -> None:
        self._registry = registry
        self._on_check = on_check
        self._max_concurrent = max_concurrent
        self._heartbeat_period = heartbeat_period
        self._name = name
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def start(self, timeout: float = 5.0) -> None:
        """Start the thread; returns once its event loop runs the health tasks."""
        if self._thread is not None:
            raise RuntimeError("the health thread is already started")
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or not self._thread.is_alive():
            raise RuntimeError("the health thread did not start")

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel the tasks, close the HTTP session and the loop, and join the thread."""
        thread = self._thread
        if thread is None:
            return
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            # RuntimeError: the loop already closed; the thread is ending on its own
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the health thread did not stop within {timeout:g}s")
        self._thread = None

    def __enter__(self) -> HealthThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = new_event_loop()
        try:
            loop.run_until_complete(self._main())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
            self._loop = self._stopping = None
            self._ready.set()  # never leave start() waiting

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        prober = Prober(self._registry, self._max_concurrent, on_check=self._on_check)
        tasks = [
            asyncio.create_task(prober.run(), name="prober"),
            asyncio.create_task(
                expire_heartbeats(self._registry, self._heartbeat_period),
                name="heartbeat expiry",
            ),
        ]
        for task in tasks:
            task.add_done_callback(_died)
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (a check costs a third less CPU), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _died(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("health task %s ended", task.get_name(), exc_info=task.exception())
