"""The threads that run provider calls, sized to the worker's concurrency however many hang."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class AttemptPool(Generic[T]):
    """Daemon threads that run attempts and hand each outcome to ``done``. Daemon, so a
    provider call stuck past the grace period cannot keep the process alive after its chunks
    were handed back.

    A thread stuck in a call the worker gave up on is replaced at once (``replace_stuck``);
    a thread that finds more than ``size`` threads idle after its call retires, so the pool
    keeps ``size`` threads for work however many calls hang, and no more once they return.
    """

    def __init__(self, size: int, done: Callable[[T], None]) -> None:
        self._done = done
        self._size = size
        self._tasks: queue.SimpleQueue[Callable[[], T] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._count = 0
        self._threads = 0
        self._busy = 0
        for _ in range(size):
            self._spawn()

    def submit(self, attempt: Callable[[], T]) -> None:
        self._tasks.put(attempt)

    def replace_stuck(self) -> None:
        """One thread is stuck in an abandoned call: start another in its place."""
        self._spawn()

    def stop(self) -> None:
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._tasks.put(None)

    @property
    def threads(self) -> int:
        with self._lock:
            return self._threads

    def _spawn(self) -> None:
        with self._lock:
            self._count += 1
            self._threads += 1
            name = f"chunkq-attempt-{self._count}"
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def _loop(self) -> None:
        while (attempt := self._tasks.get()) is not None:
            with self._lock:
                self._busy += 1
            self._done(attempt())  # the worker's attempts never raise
            with self._lock:
                self._busy -= 1
                if self._threads - self._busy > self._size:
                    self._threads -= 1
                    return
        with self._lock:
            self._threads -= 1
