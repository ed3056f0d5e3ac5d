"""Wake idle export workers when a job is queued, instead of leaving it for their next poll.

In this process a queued job rings a bell that every worker of the same database waits
on. Across processes, PostgreSQL carries the ring: `jobs.enqueue` sends NOTIFY on
CHANNEL inside its transaction (delivered at commit), and a worker process on PostgreSQL
keeps one listening connection whose notifications ring its bell. A SQLite worker in
another process still finds the job at its next poll (AUDIT_WORKER_POLL_SECONDS).
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)

CHANNEL = "audit_export_jobs"
RECONNECT_SECONDS = 2.0


class Bell:
    """A counter that waiters watch: ring() moves it and wakes everyone waiting."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rung = 0

    @property
    def rung(self) -> int:
        with self._cond:
            return self._rung

    def ring(self) -> None:
        with self._cond:
            self._rung += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> bool:
        """Wait until the bell rings past `seen` (True) or `timeout` passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._rung != seen, timeout)


_bells: dict[str, Bell] = {}
_lock = threading.Lock()


def _key(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def bell(engine: Engine) -> Bell:
    """The bell of this engine's database (shared by every engine on the same URL)."""
    key = _key(engine)
    with _lock:
        found = _bells.get(key)
        if found is None:
            found = _bells[key] = Bell()
        return found


def announce(conn: Connection) -> None:
    """Tell workers in other processes, at commit, that a job was queued (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def ring(engine: Engine) -> None:
    """Wake this process's workers of the engine's database (after the commit)."""
    bell(engine).ring()


class Listener:
    """While a worker runs on PostgreSQL: a thread turning NOTIFY on CHANNEL into rings.

    Stopped with the worker (its connection closed), so a database can be dropped after.
    """

    def __init__(self, engine: Engine, stop: threading.Event) -> None:
        self.conninfo = engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self.target = bell(engine)
        self.stop = stop
        self.thread = threading.Thread(target=self._run, name="audit-job-listener", daemon=True)

    @classmethod
    def start_for(cls, engine: Engine, stop: threading.Event) -> Listener | None:
        if engine.dialect.name != "postgresql":
            return None
        listener = cls(engine, stop)
        listener.thread.start()
        return listener

    def join(self, timeout: float = 5.0) -> None:
        self.thread.join(timeout)

    def _run(self) -> None:
        import psycopg

        while not self.stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.target.ring()  # what was queued while not listening is looked for now
                    while not self.stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self.target.ring()
            except Exception:  # noqa: BLE001 - a restart of the server must not end the worker
                log.warning("job listener: connection lost; retrying", exc_info=True)
                self.stop.wait(RECONNECT_SECONDS)
