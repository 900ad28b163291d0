"""One background thread that runs one job at a time, for the video thread that must never wait on it.

The live pipeline hands slow work (a batch to classify, a full-frame face scan) to a `Background`
when it is idle, and picks up the result on a later frame; while the thread is busy, new work is
not queued (the caller does without, or asks again next frame): a busy worker never falls behind.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Background"]

T = TypeVar("T")


class Background(Generic[T]):
    """A daemon thread running submitted jobs one at a time; the latest result waits to be taken.

    One caller submits and takes (the video thread). A job's exception is kept and raised by `take`, in
    the caller's thread, as if the job had run there.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], T] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._busy = False
        self._done: tuple[T | None, BaseException | None] | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    @property
    def busy(self) -> bool:
        """A job submitted and not finished."""
        with self._lock:
            return self._busy

    def submit(self, job: Callable[[], T]) -> None:
        """Run `job` in the thread; call only when not `busy`."""
        with self._lock:
            if self._busy:
                raise RuntimeError("Background.submit while a job is running: check `busy` first")
            self._busy = True
        self._jobs.put(job)

    def take(self) -> T | None:
        """The result of the job finished since the last `take` (None when there is none); raises its error."""
        with self._lock:
            done, self._done = self._done, None
        if done is None:
            return None
        value, error = done
        if error is not None:
            raise error
        return value

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread once the job in hand is done (waits up to `timeout` s)."""
        self._jobs.put(None)
        self.thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                done: tuple[T | None, BaseException | None] = (job(), None)
            except Exception as exc:  # noqa: BLE001 - handed to the caller by take()
                done = (None, exc)
            with self._lock:
                self._done, self._busy = done, False
