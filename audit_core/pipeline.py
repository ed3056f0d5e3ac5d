"""Write bytes on a thread of their own, so that writing a file overlaps building it.

A job's file is built by one thread (SQLite stepping, joining lines) and, in the same
thread, hashed, compressed and written. Hashing (hashlib), compressing (zlib) and
writing (a file, a multipart upload) all release the GIL on large buffers, so handing
them to a second thread lets both cores work: `Pipeline(write)` takes each chunk,
queues it (at most `depth` chunks, so memory stays flat), and calls `write(chunk)` on
its thread, in order. An error in `write` is raised in the producer at its next
`put` or at `close`; leaving the `with` block on an error stops the thread without
writing what is still queued.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType

_DONE = object()


class Pipeline:
    """Call `write` for every chunk `put`, in order, on a thread of its own."""

    def __init__(self, write: Callable[[bytes], object], depth: int = 4) -> None:
        self._write = write
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pipeline-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE or self._stop.is_set():
                return
            try:
                self._write(item)  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - handed to the producer
                self._error = exc
                self._stop.set()
                self._drain()
                return

    def _drain(self) -> None:
        """Empty the queue so a producer blocked on a full one is let go."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, chunk: bytes) -> None:
        """Queue one chunk (waits while `depth` are queued); raise the writer's error."""
        self._raise()
        while not self._stop.is_set():
            try:
                self._queue.put(chunk, timeout=0.1)
                return
            except queue.Full:
                continue
        self._raise()

    def close(self) -> None:
        """Wait until every queued chunk is written; raise the writer's error, if any."""
        if not self._stop.is_set():
            self._queue.put(_DONE)
        self._thread.join()
        self._raise()

    def abandon(self) -> None:
        """Stop without writing what is still queued; wait for the chunk in hand."""
        self._stop.set()
        self._drain()
        self._queue.put(_DONE)
        self._thread.join()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()
