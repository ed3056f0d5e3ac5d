"""Continuous delivery of the log: contiguous, signed segments by leaf range, to a folder
or to a bucket of S3-compatible object storage (s3://bucket/prefix).

Each segment holds the records of leaves a..b in leaf order as gzipped JSON Lines (the
export's own bytes, gzip with no name and no time, so the same leaves give the same
file), named `log-<a>-<b>.jsonl.gz`, beside its signed manifest (DESIGN.md "Evidence",
`records` carrying `firstLeaf` and `lastLeaf`, the snapshot being the tree of b + 1
leaves) and detached signature, `.manifest.json` and `.manifest.sig`. The same leaves
give the same segment bytes in a folder and in a bucket: one algorithm writes both,
through a `Destination` (list the names there, write a file whole and invisibly until it
is published, put a small one, delete one), `FolderDestination` or `BucketDestination`.

Segments never overlap and leave no gap. A segment is complete once its three files
exist, and they are published in the order segment, manifest, signature, each whole (a
part file renamed into place; an object PUT, or a multipart upload completed, only after
all its bytes went out), so the signature's presence means the other two are whole. A
delivery starts at the leaf after the last complete segment; first it removes the
incomplete leftovers of a crashed run (part files, unfinished multipart uploads, a
segment or manifest without its signature), so a crash or a restart at any point redoes
at most the segment it was writing. One delivery runs at a time per destination: a
thread lock in the process, and across processes an advisory lock on PostgreSQL (or a
lock file beside an SQLite database); another process's delivery in progress makes this
one `DeliveryBusyError`. Each delivered segment is itself a `portal.deliver` record in
the log. The offline verifier's `--segments DIR` checks a folder (download a bucket's
segments first, e.g. `aws s3 sync`): each segment's signature, bytes and records, the
ranges contiguous from leaf 0, and the Merkle root of all leaves against the last
segment's checkpoint.

A filtered delivery (`flt`: actions, users, namespaces; never from/to, it is continuous)
cuts the same contiguous leaf ranges, at the same points, but each segment holds only the
records of its range that match; its manifest's `query` states the filter as an export's
does and `records.count` counts those records (firstLeaf/lastLeaf still give the range,
so ranges stay contiguous and resumable). A segment is written when its range holds
anything but deliveries, as unfiltered, so it may hold no record at all (an empty gzip
stream): its signed manifest still says "nothing of leaves a..b matched". A destination
keeps one filter: a delivery asking another than the one its last complete segment's
manifest states is refused before anything is written. The verifier checks a filtered
folder's signatures, bytes, records, that each record matches the stated filter, and the
ranges' contiguity; not the Merkle root, which needs every leaf: that a range holds every
matching record rests on the portal's signature (any record can be proven included in the
signed tree with `prove ID`). An unfiltered delivery's bytes and manifests are unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, case, func, select, true

from . import access, evidence, offline_verify, signing, store
from .access import Principal
from .config import ObjectStore, Settings
from .errors import BadRequestError, ConflictError
from .filters import AuditFilter
from .formats import jsonl_chunks
from .models import AUDIT
from .record import FIELDS, format_instant
from .storage import LocalStorage, PendingFile, S3Storage

log = logging.getLogger(__name__)
SEGMENT_RE = re.compile(r"^log-(\d+)-(\d+)\.jsonl\.gz$")
PIECE_RE = re.compile(r"^(log-\d+-\d+\.jsonl\.gz)(\.manifest\.json|\.manifest\.sig)?$")
PART_RE = re.compile(
    r"^\.?log-\d+-\d+\.jsonl\.gz(\.manifest\.json|\.manifest\.sig)?(\.[0-9a-f]+)?\.part$"
)
MANIFEST, SIGNATURE = ".manifest.json", ".manifest.sig"
MAX_SEGMENT = 100_000  # leaves per segment
READ_BATCH = 5_000
ACTION = "portal.deliver"


class DeliveryBusyError(ConflictError):
    """Another thread or process is delivering to the same place right now."""


class FilterMismatchError(ConflictError):
    """The destination holds a delivery of another filter than the one asked for."""


@dataclass(frozen=True)
class Segment:
    first: int
    last: int
    name: str
    sha256: str
    size: int
    count: int  # the records it holds: all its leaves, or fewer when filtered


def segment_name(first: int, last: int) -> str:
    return f"log-{first}-{last}.jsonl.gz"


# -- where segments go ------------------------------------------------------------------------


class Destination(Protocol):
    """A place segments are delivered to, by file name."""

    label: str  # the folder or the s3:// URL, as messages and the log's records name it

    def names(self) -> Iterable[str]:
        """The names of the files there."""
        ...

    def clear_unfinished(self) -> None:
        """Drop what a killed writer left that has no name yet (part files, uploads)."""
        ...

    def open_writer(self, name: str) -> PendingFile:
        """Start a file that stays invisible until publish() (which replaces one there)."""
        ...

    def put(self, name: str, data: bytes) -> None:
        """Write a small file whole (replacing one there): it appears complete or not."""
        ...

    def read(self, name: str) -> bytes:
        """The bytes of a small file there (a manifest)."""
        ...

    def delete(self, name: str) -> None:
        """Remove a file; nothing happens when it is not there."""
        ...


class FolderDestination:
    """A folder: part files fsynced, then renamed into place."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.label = str(folder)
        self._files = LocalStorage(folder)

    def names(self) -> list[str]:
        return [p.name for p in self.folder.iterdir()] if self.folder.is_dir() else []

    def clear_unfinished(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in self.folder.iterdir():
            if PART_RE.match(path.name):  # ours, .NAME.<random>.part, and older NAME.part
                path.unlink(missing_ok=True)

    def open_writer(self, name: str) -> PendingFile:
        return self._files.open_writer(name)

    def put(self, name: str, data: bytes) -> None:
        pending = self._files.open_writer(name)
        try:
            pending.write(data)
            pending.finish()
            pending.publish()
        finally:
            pending.discard()  # a no-op once published

    def read(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()

    def delete(self, name: str) -> None:
        self._files.delete(name)


class BucketDestination:
    """Objects under s3://bucket/prefix/: one PUT each, a multipart upload when large."""

    def __init__(self, objects: S3Storage) -> None:
        self.objects = objects
        self.label = objects.store.url

    def names(self) -> list[str]:
        return self.objects.names()

    def clear_unfinished(self) -> None:
        aborted = self.objects.abort_uploads(lambda name: SEGMENT_RE.match(name) is not None)
        if aborted:
            log.info("%s: aborted %d unfinished segment upload(s)", self.label, aborted)

    def open_writer(self, name: str) -> PendingFile:
        return self.objects.open_upload(name)

    def put(self, name: str, data: bytes) -> None:
        self.objects.put(name, data)

    def read(self, name: str) -> bytes:
        return self.objects.read(name)

    def delete(self, name: str) -> None:
        self.objects.delete(name)


def destination(to: Path | ObjectStore | Destination) -> Destination:
    """The destination a setting names: a folder, or a bucket (one client per process)."""
    if isinstance(to, Path):
        return FolderDestination(to)
    if isinstance(to, ObjectStore):
        return BucketDestination(_bucket(to))
    return to


_BUCKETS: dict[ObjectStore, S3Storage] = {}


def _bucket(store_: ObjectStore) -> S3Storage:
    # boto3 clients are thread-safe and slow to make: one per bucket and process.
    with _GUARD:
        if store_ not in _BUCKETS:
            _BUCKETS[store_] = S3Storage(store_, setting="AUDIT_DELIVERY_TO")
        return _BUCKETS[store_]


def check(to: Path | ObjectStore | None, *, setting: str = "AUDIT_DELIVERY_TO") -> None:
    """Raise ConfigError naming the setting when its bucket cannot be used (a folder is
    made when the first delivery runs)."""
    if isinstance(to, ObjectStore):
        _bucket(to).check(setting)


def complete_segments(to: Path | ObjectStore | Destination) -> list[tuple[int, int]]:
    """(first, last) of every complete segment there (file, manifest, signature)."""
    return _complete(set(destination(to).names()))


def _complete(names: set[str]) -> list[tuple[int, int]]:
    found = []
    for name in names:
        m = SEGMENT_RE.match(name)
        if m and name + MANIFEST in names and name + SIGNATURE in names:
            found.append((int(m.group(1)), int(m.group(2))))
    return sorted(found)


# -- delivering ---------------------------------------------------------------------------------


def deliver(
    engine: Engine,
    to: Path | ObjectStore | Destination,
    principal: Principal,
    settings: Settings,
    *,
    max_records: int = MAX_SEGMENT,
    flt: AuditFilter | None = None,
) -> list[Segment]:
    """Deliver every leaf not yet there, in segments of at most max_records.

    Stops when only `portal.deliver` records are left to deliver, so an idle log does not
    get a segment per run holding the record of the previous run (they go with the next
    segment that has anything else). Raises DeliveryBusyError when another delivery to
    the same place is under way.

    flt: deliver only the matching records of each leaf range (actions, users, namespaces;
    None or a filter of no terms: every record). Raises FilterMismatchError, writing
    nothing, when the destination's last complete segment states another filter.
    """
    if max_records < 1:
        raise BadRequestError("a segment holds at least one record")
    wanted = normal_filter(flt)
    dest = destination(to)
    with _exclusive(engine, dest):
        dest.clear_unfinished()
        done = _clear_incomplete(dest)
        if done is not None:
            _check_same_filter(dest, segment_name(*done), wanted)
        start = done[1] + 1 if done is not None else 0
        delivered: list[Segment] = []
        while True:
            with engine.connect() as conn:
                size = evidence.read_head(conn).size
                if start > size:
                    raise BadRequestError(
                        f"{dest.label} holds leaves up to {start - 1}, but the log has only "
                        f"{size}: it is another log's delivery"
                    )
                if not _anything_but_deliveries(conn, start, size):
                    return delivered
            last = min(size, start + max_records) - 1
            segment = _write_segment(engine, dest, start, last, principal, wanted)
            resource = f"{dest.label} {segment.name}; sha256 {segment.sha256}"
            if wanted is not None:
                resource += f"; {segment.count} records matching {filter_text(wanted)}"
            with engine.begin() as conn:
                access.record(
                    conn,
                    settings.self_namespace,
                    principal,
                    action=ACTION,
                    resource=resource,
                    resource_type="LogSegment",
                )
            delivered.append(segment)
            start = last + 1


# -- a delivery's filter ------------------------------------------------------------------------


def normal_filter(flt: AuditFilter | None) -> AuditFilter | None:
    """The filter a delivery keeps: its terms sorted (so the same filter is always stated
    alike), None when it has none; a filter with from or to is refused."""
    if flt is None:
        return None
    if flt.start is not None or flt.end is not None:
        raise BadRequestError(
            "a delivery is continuous (every new record, by leaf): its filter has no from or to"
        )
    out = AuditFilter(
        actions=tuple(sorted(flt.actions)),
        action_prefixes=tuple(sorted(flt.action_prefixes)),
        users=tuple(sorted(flt.users)),
        namespaces=tuple(sorted(flt.namespaces)),
    )
    return out if out.action_terms or out.users or out.namespaces else None


def _stated(flt: AuditFilter | None) -> offline_verify.SegmentFilter:
    """The filter as a segment's manifest states it, read the way the verifier reads it."""
    if flt is None:
        return offline_verify.SegmentFilter(frozenset(), frozenset(), frozenset())
    return offline_verify.SegmentFilter(
        frozenset(flt.action_terms), frozenset(flt.users), frozenset(flt.namespaces)
    )


def filter_text(flt: AuditFilter | None) -> str:
    """The filter as AUDIT_DELIVERY_FILTER writes it (`action=user.*&namespace=payments`),
    or "no filter (every record)"."""
    return _stated(flt).text()


def _check_same_filter(dest: Destination, name: str, wanted: AuditFilter | None) -> None:
    """Refuse a delivery whose filter is not the one the last complete segment states."""
    try:
        stated = offline_verify.segment_filter(json.loads(dest.read(name + MANIFEST)))
    except (OSError, ValueError):
        raise FilterMismatchError(
            f"{dest.label}: the manifest of {name} states no filter that can be read; "
            "deliver to another place"
        ) from None
    if stated != _stated(wanted):
        raise FilterMismatchError(
            f"{dest.label} holds a delivery of {stated.text()} (up to {name}), not of "
            f"{filter_text(wanted)}: a destination keeps one filter; deliver to another place"
        )


# -- writing a segment --------------------------------------------------------------------------


def _clear_incomplete(dest: Destination) -> tuple[int, int] | None:
    """Delete the pieces of segments without a signature (a crashed run's); return the
    leaf range of the last complete segment (None: there is none)."""
    names = set(dest.names())
    done = {segment_name(a, b) for a, b in _complete(names)}
    for name in sorted(names):
        m = PIECE_RE.match(name)
        if m and m.group(1) not in done and m.group(2) != SIGNATURE:
            dest.delete(name)  # the segment or its manifest, never a signature
    complete = _complete(names)
    return complete[-1] if complete else None


def _anything_but_deliveries(conn: Connection, start: int, size: int) -> bool:
    """Whether leaves start..size-1 hold a record other than a delivery's (the first found)."""
    stmt = (
        select(AUDIT.c.leaf)
        .where(AUDIT.c.leaf >= start, AUDIT.c.leaf < size, AUDIT.c.action != ACTION)
        .limit(1)
    )
    return conn.execute(stmt).first() is not None


def _rows(
    conn: Connection, first: int, last: int, flt: AuditFilter | None = None
) -> Iterator[list[tuple[str, ...]]]:
    """The records of leaves first..last in batches (every leaf must be there); with a
    filter, only those its SQL clause matches."""
    cols = [AUDIT.c[f] for f in FIELDS]
    matched = true() if flt is None else flt.clause(AUDIT)
    at = first
    while at <= last:
        end = min(last, at + READ_BATCH - 1)
        stmt = select(*cols, case((matched, True), else_=False))
        batch = conn.execute(
            stmt.where(AUDIT.c.leaf >= at, AUDIT.c.leaf <= end).order_by(AUDIT.c.leaf)
        ).all()
        if len(batch) != end - at + 1:
            raise LookupError(f"the log has no record for some leaf in [{at}, {end}]")
        yield [tuple(r[:-1]) for r in batch if r[-1]]
        at = end + 1


def _write_segment(
    engine: Engine,
    dest: Destination,
    first: int,
    last: int,
    who: Principal,
    flt: AuditFilter | None = None,
) -> Segment:
    """Write the segment, then its manifest, then its signature (now it is complete).
    With a filter, every leaf of the range is still read (and must be there), and only the
    matching records are written."""
    name = segment_name(first, last)
    count, first_id, last_id = 0, None, None
    pending = dest.open_writer(name)
    try:
        out = signing.HashingSink(pending)
        with engine.connect() as conn:
            with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
                for batch in _rows(conn, first, last, flt):
                    if not batch:
                        continue
                    first_id = first_id or batch[0][0]
                    last_id = batch[-1][0]
                    count += len(batch)
                    for chunk in jsonl_chunks([batch]):
                        gz.write(chunk)
            upto_seq = conn.execute(select(AUDIT.c.seq).where(AUDIT.c.leaf == last)).scalar_one()
        pending.finish()
        digest, size = out.hexdigest(), out.size
        records = (first, last, count, first_id, last_id)
        signed = _sign(engine, name, records, upto_seq, who, digest, size, flt)
        pending.publish()
    finally:
        pending.discard()  # a no-op once published
    dest.put(name + MANIFEST, signed.manifest)
    dest.put(name + SIGNATURE, signed.signature)  # last: now the segment is complete
    return Segment(first, last, name, digest, size, count)


def _sign(
    engine: Engine,
    name: str,
    records: tuple[int, int, int, str | None, str | None],
    upto_seq: int,
    who: Principal,
    file_sha256: str,
    file_bytes: int,
    flt: AuditFilter | None = None,
) -> evidence.SignedManifest:
    """Sign the segment's manifest: leaves first..last, count, first and last id, and the
    filter in its query (an unfiltered one states none)."""
    first, last, count, first_id, last_id = records
    now = datetime.now(UTC)
    description = f"delivery of leaves {first}-{last}"
    query: dict[str, Any] = {
        "from": None,
        "to": format_instant(now),
        "action": [],
        "user": [],
        "namespace": [],
        "format": "jsonl",
        "description": description,
    }
    if flt is not None:
        query |= {
            "action": list(flt.action_terms),
            "user": list(flt.users),
            "namespace": list(flt.namespaces),
            "description": f"{description}, the records matching {filter_text(flt)}",
        }
    fields: dict[str, Any] = {
        "export_id": name.removesuffix(".jsonl.gz"),
        "exported_at": format_instant(now),
        "requested_by": {"user": who.email, "role": who.role, "channel": "cli"},
        "query": query,
        "upto_seq": upto_seq,
        "count": count,
        "first_id": first_id,
        "last_id": last_id,
        "file_name": name,
        "file_bytes": file_bytes,
        "file_sha256": file_sha256,
    }
    with engine.begin() as conn:
        store.lock_head(conn)
        return evidence.sign_manifest(conn, **fields, leaves=(first, last))


# -- one delivery at a time per destination ---------------------------------------------------

_GUARD = threading.Lock()
_IN_PROCESS: dict[str, threading.Lock] = {}


@contextlib.contextmanager
def _exclusive(engine: Engine, dest: Destination) -> Iterator[None]:
    """Hold this destination's delivery lock for the block, or raise DeliveryBusyError."""
    label = dest.label
    if isinstance(dest, FolderDestination):
        label = str(dest.folder.resolve())  # the same folder whatever the working directory
    with _GUARD:
        lock = _IN_PROCESS.setdefault(label, threading.Lock())
    if not lock.acquire(blocking=False):
        raise DeliveryBusyError(f"another delivery to {dest.label} is under way")
    try:
        with _database_lock(engine, label) as held:
            if not held:
                raise DeliveryBusyError(f"another process is delivering to {dest.label} right now")
            yield
    finally:
        lock.release()


@contextlib.contextmanager
def _database_lock(engine: Engine, label: str) -> Iterator[bool]:
    """Across processes: PostgreSQL's advisory lock for this destination (released when
    the process dies, with its connection), or a lock file beside the SQLite database."""
    if engine.dialect.name == "postgresql":
        digest = hashlib.sha256(f"audit-delivery {label}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        with engine.connect() as conn:
            held = bool(conn.execute(select(func.pg_try_advisory_lock(key))).scalar_one())
            conn.commit()  # the lock belongs to the session: no transaction left open
            try:
                yield held
            finally:
                if held:
                    conn.execute(select(func.pg_advisory_unlock(key)))
                    conn.commit()
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield True  # one process only
        return
    path = Path(database).with_name(Path(database).name + "-delivery.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the process dies
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
