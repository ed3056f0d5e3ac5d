"""Continuous delivery of the log to a folder: contiguous, signed segments by leaf range.

Each segment holds the records of leaves a..b in leaf order as gzipped JSON Lines (the
export's own bytes, gzip with no name and no time, so the same leaves give the same
file), named `log-<a>-<b>.jsonl.gz`, beside its signed manifest (DESIGN.md "Evidence",
`records` carrying `firstLeaf` and `lastLeaf`, the snapshot being the tree of b + 1
leaves) and detached signature. Segments never overlap and leave no gap: a delivery
starts at the leaf after the last complete segment in the folder (all three files), and
a segment becomes complete only by renames made after its bytes are written, so a crash
or a restart redoes at most the segment it was writing. Each delivered segment is
itself a `portal.deliver` record in the log. The offline verifier's `--segments DIR`
checks a folder: each segment's signature, bytes and records, the ranges contiguous
from leaf 0, and the Merkle root of all leaves against the last segment's checkpoint.

A folder only: delivery to object storage is not built yet.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, select

from . import access, evidence, signing, store
from .access import Principal
from .config import Settings
from .errors import BadRequestError
from .formats import jsonl_chunks
from .models import AUDIT
from .record import FIELDS, format_instant

SEGMENT_RE = re.compile(r"^log-(\d+)-(\d+)\.jsonl\.gz$")
MAX_SEGMENT = 100_000  # leaves per segment
READ_BATCH = 5_000
ACTION = "portal.deliver"


@dataclass(frozen=True)
class Segment:
    first: int
    last: int
    name: str
    sha256: str
    size: int


def segment_name(first: int, last: int) -> str:
    return f"log-{first}-{last}.jsonl.gz"


def complete_segments(folder: Path) -> list[tuple[int, int]]:
    """(first, last) of every complete segment in the folder (file, manifest, signature)."""
    found = []
    for path in folder.iterdir() if folder.is_dir() else ():
        m = SEGMENT_RE.match(path.name)
        halves = (_beside(path, ".manifest.json"), _beside(path, ".manifest.sig"))
        if m and all(half.exists() for half in halves):
            found.append((int(m.group(1)), int(m.group(2))))
    return sorted(found)


def next_leaf(folder: Path) -> int:
    """The leaf a delivery to this folder starts at: after its last complete segment."""
    done = complete_segments(folder)
    return done[-1][1] + 1 if done else 0


def deliver(
    engine: Engine,
    folder: Path,
    principal: Principal,
    settings: Settings,
    *,
    max_records: int = MAX_SEGMENT,
) -> list[Segment]:
    """Deliver every leaf not yet in the folder, in segments of at most max_records.

    Stops when only `portal.deliver` records are left to deliver, so an idle log does not
    get a segment per run holding the record of the previous run (they go with the next
    segment that has anything else).
    """
    if max_records < 1:
        raise BadRequestError("a segment holds at least one record")
    folder.mkdir(parents=True, exist_ok=True)
    delivered: list[Segment] = []
    while True:
        start = next_leaf(folder)
        with engine.connect() as conn:
            size = evidence.read_head(conn).size
            if start > size:
                raise BadRequestError(
                    f"{folder} holds leaves up to {start - 1}, but the log has only {size}: "
                    "it is another log's folder"
                )
            if not _anything_but_deliveries(conn, start, size):
                return delivered
        last = min(size, start + max_records) - 1
        segment = _write_segment(engine, folder, start, last, principal)
        with engine.begin() as conn:
            access.record(
                conn,
                settings.self_namespace,
                principal,
                action=ACTION,
                resource=f"{folder} {segment.name}; sha256 {segment.sha256}",
                resource_type="LogSegment",
            )
        delivered.append(segment)


def _anything_but_deliveries(conn: Connection, start: int, size: int) -> bool:
    """Whether leaves start..size-1 hold a record other than a delivery's (the first found)."""
    stmt = (
        select(AUDIT.c.leaf)
        .where(AUDIT.c.leaf >= start, AUDIT.c.leaf < size, AUDIT.c.action != ACTION)
        .limit(1)
    )
    return conn.execute(stmt).first() is not None


def _rows(conn: Connection, first: int, last: int) -> Iterator[list[tuple[str, ...]]]:
    cols = [AUDIT.c[f] for f in FIELDS]
    at = first
    while at <= last:
        end = min(last, at + READ_BATCH - 1)
        batch = conn.execute(
            select(*cols).where(AUDIT.c.leaf >= at, AUDIT.c.leaf <= end).order_by(AUDIT.c.leaf)
        ).all()
        if len(batch) != end - at + 1:
            raise LookupError(f"the log has no record for some leaf in [{at}, {end}]")
        yield [tuple(r) for r in batch]
        at = end + 1


def _write_segment(engine: Engine, folder: Path, first: int, last: int, who: Principal) -> Segment:
    name = segment_name(first, last)
    final = folder / name
    part = folder / (name + ".part")
    count, first_id, last_id = 0, None, None
    with engine.connect() as conn, open(part, "wb") as raw:
        hashing = signing.HashingSink(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=hashing, mtime=0) as gz:
            for batch in _rows(conn, first, last):
                first_id = first_id or batch[0][0]
                last_id = batch[-1][0]
                count += len(batch)
                for chunk in jsonl_chunks([batch]):
                    gz.write(chunk)
        upto_seq = conn.execute(select(AUDIT.c.seq).where(AUDIT.c.leaf == last)).scalar_one()
    records = (first, last, count, first_id, last_id)
    signed = _sign(engine, name, records, upto_seq, who, hashing.hexdigest(), hashing.size)
    manifest_part = folder / (name + ".manifest.json.part")
    sig_part = folder / (name + ".manifest.sig.part")
    manifest_part.write_bytes(signed.manifest)
    sig_part.write_bytes(signed.signature)
    for path in (part, manifest_part, sig_part):
        _fsync(path)
    os.replace(part, final)
    os.replace(manifest_part, _beside(final, ".manifest.json"))
    os.replace(sig_part, _beside(final, ".manifest.sig"))  # last: now the segment is complete
    return Segment(first, last, name, hashing.hexdigest(), hashing.size)


def _sign(
    engine: Engine,
    name: str,
    records: tuple[int, int, int, str | None, str | None],
    upto_seq: int,
    who: Principal,
    file_sha256: str,
    file_bytes: int,
) -> evidence.SignedManifest:
    """Sign the segment's manifest: leaves first..last, count, first and last id."""
    first, last, count, first_id, last_id = records
    now = datetime.now(UTC)
    with engine.begin() as conn:
        store.lock_head(conn)
        return evidence.sign_manifest(
            conn,
            export_id=name.removesuffix(".jsonl.gz"),
            exported_at=format_instant(now),
            requested_by={"user": who.email, "role": who.role, "channel": "cli"},
            query={
                "from": None,
                "to": format_instant(now),
                "action": [],
                "user": [],
                "namespace": [],
                "format": "jsonl",
                "description": f"delivery of leaves {first}-{last}",
            },
            upto_seq=upto_seq,
            count=count,
            first_id=first_id,
            last_id=last_id,
            file_name=name,
            file_bytes=file_bytes,
            file_sha256=file_sha256,
            leaves=(first, last),
        )


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
