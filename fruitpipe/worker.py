"""A bounded background worker that drops work rather than queue it without bound.

Work that must never slow the request path (writing a captured prediction, running a shadow
candidate) is handed to one daemon thread through a queue of ``size`` items: :meth:`submit`
never waits, and when the queue is full the item is dropped and counted in :attr:`dropped`.
The thread starts with the first item.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger("fruitpipe.worker")


class DroppingWorker:
    """``handle(*item)`` for each submitted item, on one thread named ``name``; an exception is
    logged and the worker goes on. ``thread`` is None until the first item."""

    def __init__(self, name: str, handle: Callable[..., None], size: int) -> None:
        self.name, self.handle = name, handle
        self._queue: queue.Queue = queue.Queue(size)
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.dropped = 0

    def submit(self, *item: Any) -> bool:
        """Queue ``item`` without waiting; False (and ``dropped`` + 1) when the queue is full."""
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self.thread.start()
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            with self._lock:
                self.dropped += 1
            return False

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                self.handle(*item)
            except Exception:  # noqa: BLE001 - one bad item must not stop the worker
                log.exception("%s: an item failed", self.name)
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every submitted item is handled (tests, benchmarks, shutdown)."""
        self._queue.join()
