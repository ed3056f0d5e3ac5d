"""Export workers: the loop that claims a job, builds its file and publishes it whole.

A worker's life is a loop: sweep expired files, claim the oldest runnable job, run it.
The job's states and every transition (claim, lease renewal, completion, retry, failure,
expiry) belong to `jobs`; this module writes the file and decides when to call which.

The file is written where `storage` keeps job files, under no visible name (a part file in
the export folder, or a multipart upload to the bucket), and only published (renamed into
place, or the upload completed and its size checked) inside the transaction that marks the
job completed. Any error drops what was written (the part file, the upload's parts).
"""

from __future__ import annotations

import gzip
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from . import (
    access,
    delivery,
    evidence,
    export,
    fastpath,
    jobs,
    manifests,
    pipeline,
    signing,
    wakeup,
)
from .config import Settings, Timing
from .context import Context
from .errors import AuditError
from .jobs import MAX_ATTEMPTS, ClaimedJob, LeaseLostError
from .storage import PendingFile, open_storage

log = logging.getLogger(__name__)
THREAD_NAME = "audit-export-worker"
STOP_CHECK_SECONDS = 0.5  # how soon an idle worker notices it was asked to stop


class StopRequestedError(AuditError):
    """The worker was asked to stop in the middle of a job."""

    def __init__(self) -> None:
        super().__init__("the worker was asked to stop")


class Worker:
    """One claim-run loop. Several may share a process (threads) or a database (hosts)."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        timing: Timing | None = None,
        name: str | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.timing = timing or settings.timing
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stop_event = stop_event or threading.Event()
        self.storage = open_storage(settings)
        self._last_sweep = 0.0
        self._last_checkpoint = time.monotonic()  # the first one after a full period
        self._last_delivery = -float("inf")  # the first delivery at once

    # -- the loop -------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Sweep, claim and run until stop_event is set."""
        log.info("export worker %s started", self.name)
        listener = wakeup.Listener.start_for(self.engine, self.stop_event)
        bell = wakeup.bell(self.engine)
        while not self.stop_event.is_set():
            seen = bell.rung  # a job queued from here on ends the wait below at once
            try:
                if time.monotonic() - self._last_sweep >= self.timing.sweep_seconds:
                    sweep_expired(self.engine, self.settings)
                    self._last_sweep = time.monotonic()
                if time.monotonic() - self._last_checkpoint >= self.settings.checkpoint_seconds:
                    self._last_checkpoint = time.monotonic()
                    if evidence.signer_for(self.engine) is not None:
                        evidence.checkpoint_if_grown(self.engine)
                self._deliver_when_due()
                ran = self.run_once()
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the worker
                log.exception("export worker %s: loop error", self.name)
                ran = None
            if ran is None:
                self._idle(bell, seen)
        if listener is not None:
            listener.join()
        log.info("export worker %s stopped", self.name)

    def _deliver_when_due(self) -> None:
        """AUDIT_DELIVERY_TO (a folder or a bucket): deliver the new leaves every
        AUDIT_DELIVERY_SECONDS (only the records matching AUDIT_DELIVERY_FILTER, when set);
        skipped while another thread or host is delivering there, or while the destination
        holds another filter's delivery (logged, one line each time)."""
        target = self.settings.delivery_to
        if target is None or evidence.signer_for(self.engine) is None:
            return
        if time.monotonic() - self._last_delivery < self.settings.delivery_seconds:
            return
        self._last_delivery = time.monotonic()
        who = access.Principal(f"worker:{self.name}", "admin", None, "local")
        try:
            delivery.deliver(
                self.engine, target, who, self.settings, flt=self.settings.delivery_filter
            )
        except delivery.DeliveryBusyError as busy:
            log.info("export worker %s: %s; delivering next time", self.name, busy.message)
        except delivery.FilterMismatchError as mismatch:
            log.error("export worker %s: not delivering: %s", self.name, mismatch.message)

    def _idle(self, bell: wakeup.Bell, seen: int) -> None:
        """Wait for a queued job's ring, the next poll, or stop (looked at twice a second)."""
        deadline = time.monotonic() + self.timing.poll_seconds
        while not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or bell.wait(seen, min(left, STOP_CHECK_SECONDS)):
                return

    def run_until_idle(self) -> list[str]:
        """Run jobs until none is runnable; return their ids (scripts and tests)."""
        done = []
        while (job_id := self.run_once()) is not None:
            done.append(job_id)
        return done

    def run_once(self) -> str | None:
        """Claim one runnable job and run it; return its id, or None when there is none."""
        job = self.claim()
        if job is None:
            return None
        self.run(job)
        return job.job_id

    def claim(self) -> ClaimedJob | None:
        """Take the oldest runnable job under a fresh lease (see jobs.claim)."""
        return jobs.claim(self.engine, self.name, self.timing.lease_seconds, self.settings)

    # -- running --------------------------------------------------------------------------

    def run(self, job: ClaimedJob) -> None:
        """Build the claimed job's file and publish it; on error retry or fail it."""
        job_id = job.job_id
        log.info("export worker %s: running %s (attempt %d)", self.name, job_id, job.attempts)
        pending: PendingFile | None = None
        try:
            plan = job.plan()
            with self.engine.connect() as conn:
                refusal = access.export_refusal(conn, job.requested_by, plan.filter.namespaces)
            if refusal is not None:
                log.warning("export worker %s: %s refused: %s", self.name, job_id, refusal)
                jobs.fail(self.engine, job, self.settings, f"refused: {refusal}")
                return
            # Still ours? open_writer clears what earlier attempts left under the name, so a
            # worker that was held up past its lease must not clear the new holder's upload.
            jobs.renew(self.engine, job, self.timing.lease_seconds, 0)
            pending = self.storage.open_writer(job.file_name)
            size, digest, rows = self._write(job, plan, pending)
            self._sign(job, plan, job.file_name, size, digest)
            jobs.complete(
                self.engine,
                job,
                self.settings,
                size=size,
                digest=digest,
                rows=rows,
                publish=pending.publish,
            )
            log.info(
                "export worker %s: %s completed, %d rows, %d bytes", self.name, job_id, rows, size
            )
        except StopRequestedError:
            _discard(pending)
            jobs.release(self.engine, job)
            log.info("export worker %s: released %s", self.name, job_id)
        except LeaseLostError:
            _discard(pending)
            log.warning("export worker %s: lost the lease on %s", self.name, job_id)
        except Exception as exc:  # noqa: BLE001 - recorded on the job, readable
            _discard(pending)
            log.exception("export worker %s: %s failed", self.name, job_id)
            self._failed(job, exc)

    def _sign(
        self, job: ClaimedJob, plan: export.ExportPlan, name: str, size: int, digest: str
    ) -> None:
        """Sign the job file's manifest (kept in the database, served beside the file)."""
        if evidence.signer_for(self.engine) is None:
            return  # a worker without the key builds files; the portal's worker signs them
        requester = manifests.Requester(job.requested_by, job.requested_role, "job")
        manifests.sign(
            self.engine,
            plan,
            requester,
            export_id=job.job_id,
            description=plan.filter.describe(),
            file_name=name,
            file_bytes=size,
            file_sha256=digest,
        )

    def _write(
        self, job: ClaimedJob, plan: export.ExportPlan, pending: PendingFile
    ) -> tuple[int, str, int]:
        """Stream the plan's bytes (gzipped if asked) into pending; size, SHA-256, rows."""
        sink = signing.HashingSink(pending)
        out: Any = sink
        if job.compression == "gzip":
            # mtime=0 and no file name in the header: the same job gives the same bytes.
            # Level 1 compresses ~2.5x faster than 6 for a file ~15% larger (measured on
            # the demo log), which keeps a gzip job near the plain export's throughput.
            out = gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=1)
        # Hashing, compressing and writing run on a thread of their own (they release
        # the GIL), beside the database's stepping: see pipeline.py.
        with self.engine.connect() as conn, pipeline.Pipeline(out.write) as pipe:
            for chunk in self._paced(job, plan, export.chunks(conn, plan)):
                pipe.put(chunk)
        if out is not sink:
            out.close()  # writes the gzip trailer into sink; pending stays open
        pending.finish()
        return sink.size, sink.hexdigest(), plan.total

    def _paced(
        self, job: ClaimedJob, plan: export.ExportPlan, chunks: Iterator[bytes]
    ) -> Iterator[bytes]:
        """Pass chunks through, renewing the lease and reporting progress as they go."""
        lines = -1 if plan.fmt == "csv" else 0  # the CSV header is not a row
        last_beat = time.monotonic()
        try:
            for chunk in chunks:
                yield chunk
                # One record per line in every format (CSV cells with line breaks aside),
                # so counting lines is a good progress figure; the final count is the plan's.
                # (CSV lines end in CRLF, so counting LFs counts lines there too.)
                lines += fastpath.count_byte(chunk, 0x0A)
                if self.stop_event.is_set():
                    raise StopRequestedError
                if self.timing.batch_delay:
                    time.sleep(self.timing.batch_delay)
                if time.monotonic() - last_beat >= self.timing.heartbeat_seconds:
                    rows = max(0, min(lines, plan.total))
                    jobs.renew(self.engine, job, self.timing.lease_seconds, rows)
                    last_beat = time.monotonic()
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # end the database cursor while its connection is still open

    def _failed(self, job: ClaimedJob, exc: Exception) -> None:
        error = attempt_error(exc)
        if job.attempts >= MAX_ATTEMPTS:
            jobs.fail(
                self.engine, job, self.settings, f"failed after {job.attempts} attempts: {error}"
            )
        else:
            # Back off before the next attempt (30 s, then 60 s by default): a full
            # disk or a database restart gets time to clear.
            wait = timedelta(seconds=self.timing.retry_seconds * 2 ** (job.attempts - 1))
            jobs.retry_later(self.engine, job, f"{error}; the portal will retry", wait)


def attempt_error(exc: Exception) -> str:
    """What the requester is told about a failed attempt: the cause, never a server path.

    The full exception, path and traceback included, is in the server log (run() logs it).
    """
    if isinstance(exc, AuditError):
        return exc.message[:500]
    if isinstance(exc, OSError):
        # strerror is the OS's words alone ("Permission denied"); str(exc) adds the path.
        why = exc.strerror or type(exc).__name__
        return f"the export file could not be written ({why})"
    return f"the export file could not be made ({type(exc).__name__}; see the server log)"


def sweep_expired(engine: Engine, settings: Settings, now: datetime | None = None) -> list[str]:
    """Delete the files (or objects) of completed jobs past their expiry; mark them expired."""
    return jobs.expire_due(engine, settings, open_storage(settings).delete, now)


def _discard(pending: PendingFile | None) -> None:
    """Drop a job's unpublished file; a failure to (the store is down) is only logged.

    What is left is cleared by the next attempt's open_writer, or expires in the store.
    """
    if pending is None:
        return
    try:
        pending.discard()
    except Exception:  # noqa: BLE001 - the job's own error matters more
        log.warning("could not drop an unfinished export file", exc_info=True)


# -- running workers ----------------------------------------------------------------------


class WorkerThreads:
    """Worker threads sharing one stop event; stop() asks them to finish and waits."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        concurrency: int = 1,
        timing: Timing | None = None,
    ) -> None:
        self.engine = engine
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        base = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        for i in range(concurrency):
            w = Worker(
                engine, settings, timing=timing, name=f"{base}/{i + 1}", stop_event=self.stop_event
            )
            name = THREAD_NAME if concurrency == 1 else f"{THREAD_NAME}-{i + 1}"
            self.threads.append(threading.Thread(target=w.run_forever, name=name, daemon=True))

    def start(self) -> WorkerThreads:
        for t in self.threads:
            t.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Release any job in progress and wait for the threads to end."""
        self.stop_event.set()
        wakeup.ring(self.engine)  # idle workers wake at once instead of at their next look
        for t in self.threads:
            t.join(timeout)

    def join(self) -> None:
        while any(t.is_alive() for t in self.threads):
            for t in self.threads:
                t.join(0.5)


def start_in_process(ctx: Context) -> WorkerThreads:
    """Start this portal process's worker threads (AUDIT_PORTAL_WORKERS, none for 0);
    return a handle with stop()."""
    return WorkerThreads(ctx.engine, ctx.settings, concurrency=ctx.settings.portal_workers).start()
