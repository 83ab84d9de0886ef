"""The one thread that does MLX work for the dashboard.

MLX streams are thread-local, so loading a model on one thread and generating on another is
a bug waiting to happen; and any MLX call on the UI thread freezes the screen. The dashboard
therefore sends every model job to this single long-lived thread through a queue and gets
results back as futures.
"""

import queue
import threading
from concurrent.futures import Future
from typing import Callable


class Cancelled(Exception):
    """Raised inside a job that noticed ``worker.cancelled``."""


class MLXWorker:
    def __init__(self, name: str = "mlx-worker"):
        self._jobs: "queue.Queue" = queue.Queue()
        self.cancelled = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable, *args, **kwargs) -> Future:
        """Run ``job(*args, **kwargs)`` on the worker thread, after the jobs already queued."""
        future: Future = Future()
        self._jobs.put((future, job, args, kwargs))
        return future

    def cancel(self) -> None:
        """Ask the running job to stop at its next check (jobs poll ``cancelled``)."""
        self.cancelled.set()

    def check(self) -> None:
        """For jobs: raise Cancelled if a cancel was requested."""
        if self.cancelled.is_set():
            raise Cancelled()

    def stop(self, timeout: float = 10.0) -> bool:
        """Cancel the running job, drop queued ones, end the thread. True if it ended in time."""
        self.cancel()
        while True:
            try:
                future, *_ = self._jobs.get_nowait()
            except queue.Empty:
                break
            future.cancel()
        self._jobs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def _loop(self):
        while True:
            item = self._jobs.get()
            if item is None:
                return
            future, job, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            self.cancelled.clear()
            try:
                result = job(*args, **kwargs)
            except BaseException as error:  # handed to whoever waits on the future
                future.set_exception(error)
            else:
                future.set_result(result)
