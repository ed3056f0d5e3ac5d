"""pipeline.Pipeline: writes in order on its own thread, hands errors back, stays bounded."""

from __future__ import annotations

import threading

import pytest

from audit_core.pipeline import Pipeline


def test_every_chunk_is_written_in_order_on_another_thread() -> None:
    out: list[bytes] = []
    threads: set[str] = set()

    def write(chunk: bytes) -> None:
        threads.add(threading.current_thread().name)
        out.append(chunk)

    with Pipeline(write) as pipe:
        for i in range(1000):
            pipe.put(str(i).encode())
    assert out == [str(i).encode() for i in range(1000)]
    assert threads == {"pipeline-writer"}


def test_a_writers_error_reaches_the_producer_and_stops_the_writes() -> None:
    written: list[bytes] = []

    def write(chunk: bytes) -> None:
        if chunk == b"3":
            raise OSError("disk full")
        written.append(chunk)

    with pytest.raises(OSError, match="disk full"), Pipeline(write, depth=2) as pipe:
        for i in range(100):
            pipe.put(str(i).encode())
    assert written == [b"0", b"1", b"2"]


def test_an_error_in_the_last_write_is_raised_by_close() -> None:
    def write(chunk: bytes) -> None:
        if chunk == b"last":
            raise ValueError("no room for the last one")

    pipe = Pipeline(write)
    pipe.put(b"first")
    pipe.put(b"last")
    with pytest.raises(ValueError, match="no room"):
        pipe.close()


def test_leaving_on_an_error_writes_nothing_more_and_ends_the_thread() -> None:
    gate = threading.Event()
    written: list[bytes] = []

    def write(chunk: bytes) -> None:
        gate.wait(5)
        written.append(chunk)

    with pytest.raises(RuntimeError, match="stop"), Pipeline(write, depth=3) as pipe:
        for i in range(4):
            pipe.put(str(i).encode())
        gate.set()
        raise RuntimeError("stop")
    # The chunk in hand when the producer stopped may be written; nothing queued after it.
    assert len(written) <= 1
    assert not any(t.name == "pipeline-writer" for t in threading.enumerate())


def test_the_queue_holds_at_most_depth_chunks() -> None:
    gate = threading.Event()
    started = threading.Event()

    def write(chunk: bytes) -> None:
        started.set()
        gate.wait(5)

    pipe = Pipeline(write, depth=2)
    pipe.put(b"a")
    started.wait(5)  # the writer holds "a"
    pipe.put(b"b")
    pipe.put(b"c")
    blocked = threading.Thread(target=pipe.put, args=(b"d",))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # "b" and "c" fill the queue: "d" waits
    gate.set()
    blocked.join(5)
    assert not blocked.is_alive()
    pipe.close()
