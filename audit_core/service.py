"""What pages and routes call: every read and export takes the acting principal.

There is no unscoped path from the UI or the API to the log: each function scopes
the filter to the principal's grants first (access.scope), refuses a namespace
outside them (AccessDeniedError), and refuses exports to roles that may only view.
These functions raise and never write the denial themselves: the face that catches
AccessDeniedError answers it (403, or a message) and records it once with access.denied.
"""

from __future__ import annotations

import itertools
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select

from . import access, evidence, export, manifests, offline_verify, query, signing
from .access import AccessDeniedError, Principal, scope
from .config import Settings
from .errors import BadRequestError, NotFoundError
from .filters import MAX_VALUE, AuditFilter
from .models import AUDIT, MANIFESTS
from .offline_verify import Check
from .pipeline import Pipeline
from .record import FIELDS

PICKER_COLUMNS = ("action", "user", "namespace")


def count(conn: Connection, who: Principal, flt: AuditFilter) -> int:
    """Count the records the principal may see that match the filter."""
    return query.count(conn, scope(who, flt))


def preview(
    conn: Connection,
    who: Principal,
    flt: AuditFilter,
    *,
    limit: int = 500,
    after: str | None = None,
) -> query.Page:
    """One keyset page of matching records within the principal's grants."""
    return query.preview(conn, scope(who, flt), limit=limit, after=after)


def summary(conn: Connection, who: Principal, flt: AuditFilter) -> query.Summary:
    """Totals and time span of matching records within the principal's grants."""
    return query.summary(conn, scope(who, flt))


def facets(
    conn: Connection, who: Principal, flt: AuditFilter, limit: int = 10
) -> dict[str, list[tuple[str, int]]]:
    """Top values per column among matching records within the principal's grants."""
    return query.facets(conn, scope(who, flt), limit)


def histogram(
    conn: Connection,
    who: Principal,
    flt: AuditFilter,
    *,
    bucket: str = "day",
    by: str = "family",
) -> list[tuple[int, str, int]]:
    """Counts per time bucket within the principal's grants."""
    return query.histogram(conn, scope(who, flt), bucket=bucket, by=by)


def distinct_values(conn: Connection, who: Principal, column: str) -> list[str]:
    """Every value of action, user or namespace the principal may see (for pickers)."""
    if column not in PICKER_COLUMNS:
        raise ValueError(f"no picker for column {column!r}")
    return query.distinct_values(conn, column, scope(who, AuditFilter()))


def namespaces(conn: Connection, who: Principal) -> list[str]:
    """The namespaces the principal may pick: their grants, or every stored one for '*'."""
    if who.namespaces is None:
        return query.distinct_values(conn, "namespace")
    return sorted(who.namespaces)


def plan_export(
    conn: Connection, who: Principal, flt: AuditFilter, fmt: str, *, now: datetime | None = None
) -> export.ExportPlan:
    """Scope, snapshot and count an export; refuse principals who may not export."""
    access.require_export(who)
    return export.plan(conn, scope(who, flt), fmt, now=now)


def check_plan(who: Principal, plan: export.ExportPlan) -> None:
    """Refuse a plan the principal could not have made (another role, wider namespaces)."""
    access.require_export(who)
    if who.namespaces is None:
        return
    wanted = set(plan.filter.namespaces)
    if not wanted or not wanted <= who.namespaces:
        raise AccessDeniedError("this export reaches beyond your namespace grants")


def is_immediate(plan: export.ExportPlan, settings: Settings) -> bool:
    """True when the export is small enough to build on the spot (the seed's 10,000 rule)."""
    return fits_immediate(plan.total, settings)


def fits_immediate(total: int, settings: Settings) -> bool:
    """The seed's rule on a count: at or under AUDIT_SYNC_EXPORT_LIMIT is built on the spot."""
    return total <= settings.sync_export_limit


@dataclass(frozen=True)
class ManifestRequest:
    """Sign a manifest once the stream has ended, for this file name; its id is reserved in
    the audit record's transaction."""

    file_name: str
    description: str


class StreamedExport:
    """An immediate export handed out as it is built, and its manifest signed after.

    `chunks()` writes the audit.export record (and, with a manifest, reserves the manifest's
    id in the same transaction, `export_id`) once the first chunk is built and before it is
    handed out: a reader who hangs up half-way has still been recorded, and if the record
    cannot be written nothing is handed out. With a manifest, the bytes are hashed on the
    way and `sign()` keeps the signed manifest once the last one has left (`complete`).
    The plan is checked against the principal first, so a plan made for someone else
    cannot be replayed.
    """

    def __init__(
        self,
        engine: Engine,
        who: Principal,
        plan: export.ExportPlan,
        settings: Settings,
        *,
        channel: str = "api",
        manifest: ManifestRequest | None = None,
    ) -> None:
        check_plan(who, plan)
        self.engine, self.who, self.plan, self.settings = engine, who, plan, settings
        self.channel, self.manifest = channel, manifest
        self.export_id: str | None = None  # reserved with the audit record (a manifest)
        self.complete = False  # every chunk was built and handed out
        self._sink = signing.HashingSink()

    def chunks(self) -> Iterator[bytes]:
        """The export's bytes; the audit record is written before the first one leaves."""
        with self.engine.connect() as conn:
            chunks = export.chunks(conn, self.plan)
            try:
                first = next(chunks, None)
                self.export_id = record_export(
                    self.engine,
                    self.who,
                    self.plan,
                    self.settings,
                    channel=self.channel,
                    reserve_id=self.manifest is not None,
                )
                head = [first] if first is not None else []
                if self.manifest is None:
                    yield from itertools.chain(head, chunks)
                else:
                    # Hashing releases the GIL: on a thread of its own it overlaps building
                    # the next chunk instead of delaying it (BENCHMARKS.md "Export paths").
                    with Pipeline(self._sink.write) as hashing:
                        for chunk in itertools.chain(head, chunks):
                            hashing.put(chunk)
                            yield chunk
            finally:
                # A reader who hangs up must not hand a connection with an open COPY or
                # cursor back to the pool: close the source before the connection.
                chunks.close()
        self.complete = True

    def sign(self) -> evidence.SignedManifest:
        """Sign and keep the manifest of the bytes handed out (all of them)."""
        if self.manifest is None or self.export_id is None or not self.complete:
            raise RuntimeError("sign a streamed export's manifest once its stream has ended")
        return manifests.sign(
            self.engine,
            self.plan,
            manifests.Requester(self.who.email, self.who.role, self.channel),
            export_id=self.export_id,
            description=self.manifest.description,
            file_name=self.manifest.file_name,
            file_bytes=self._sink.size,
            file_sha256=self._sink.hexdigest(),
        )


def export_chunks(
    engine: Engine,
    who: Principal,
    plan: export.ExportPlan,
    settings: Settings,
    *,
    channel: str = "api",
    manifest: ManifestRequest | None = None,
) -> Iterator[bytes]:
    """Stream an immediate export's bytes, writing its audit.export record first.

    As StreamedExport, with the manifest (if asked for) signed as the stream ends.
    """
    return _signed_at_end(
        StreamedExport(engine, who, plan, settings, channel=channel, manifest=manifest)
    )


def _signed_at_end(streamed: StreamedExport) -> Iterator[bytes]:
    yield from streamed.chunks()
    if streamed.manifest is not None:
        streamed.sign()


def record_export(
    engine: Engine,
    who: Principal,
    plan: export.ExportPlan,
    settings: Settings,
    *,
    channel: str,
    reserve_id: bool = False,
) -> str | None:
    """Write the audit.export record for an export that was handed out; with `reserve_id`,
    reserve its manifest's id in the same transaction and return it."""
    check_plan(who, plan)
    with engine.begin() as conn:
        access.record(
            conn,
            settings.self_namespace,
            who,
            action="audit.export",
            resource=f"{channel} {plan.fmt} {plan.total} rows; {plan.filter.describe()}",
            resource_type="AuditExport",
        )
        return manifests.next_export_id(conn, plan) if reserve_id else None


def manifest_for(
    conn: Connection, export_id: str, who: Principal | None
) -> evidence.SignedManifest | None:
    """An export's signed manifest: its requester's or an admin's (None: checked already)."""
    mine = None if who is None or who.is_admin else who.email
    return evidence.manifest_for(conn, export_id, requested_by=mine)


@dataclass(frozen=True)
class SignedExport:
    """One signed export as the portal lists it."""

    export_id: str
    file_name: str
    channel: str
    requested_by: str
    signed_at: datetime


def signed_exports(conn: Connection, who: Principal, limit: int = 20) -> list[SignedExport]:
    """The newest signed exports: the principal's own, or everyone's for an admin."""
    m = MANIFESTS.c
    stmt = select(m.export_id, m.file_name, m.channel, m.requested_by, m.created_at)
    if not who.is_admin:
        stmt = stmt.where(m.requested_by == who.email.lower())
    rows = conn.execute(stmt.order_by(m.created_at.desc()).limit(limit)).all()
    return [SignedExport(*row) for row in rows]


# ---------------------------------------------------------------------------- evidence


def visible_record(conn: Connection, who: Principal, record_id: str) -> dict[str, str] | None:
    """The record with this id if the principal may see it, else None.

    Scoped as every read is (access.scope), so a record outside the principal's grants
    is answered exactly like an id that does not exist: the answer tells no one it is there.
    """
    if not record_id or len(record_id) > MAX_VALUE:
        return None
    try:
        scoped = scope(who, AuditFilter())
    except AccessDeniedError:  # no grants at all: no record is theirs to see
        return None
    stmt = select(*query.EXPORT_COLUMNS).where(AUDIT.c.id == record_id, scoped.clause(AUDIT))
    row = conn.execute(stmt).first()
    return None if row is None else dict(zip(FIELDS, map(str, row), strict=True))


def prove_record(
    conn: Connection, who: Principal, record_id: str, size: int | None = None
) -> dict[str, Any]:
    """The inclusion answer for a record the principal may see (DESIGN.md "Evidence").

    A record outside the principal's grants is refused exactly like an unknown id, so
    the answer does not tell anyone that it exists. The proof may keep a new on-demand
    checkpoint: call this inside `engine.begin()`.
    """
    if visible_record(conn, who, record_id) is None:
        raise NotFoundError(f"no record {record_id}")
    return evidence.inclusion(conn, record_id, size)


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the name it came under and its bytes."""

    name: str
    data: bytes


def verify_upload(
    file: Upload,
    manifest: Upload,
    signature: Upload,
    public_pem: bytes,
    proofs: Upload | None = None,
) -> list[Check]:
    """Run the offline verifier's checks over uploaded files with the portal's public key.

    The list ends at the first failed check, as the verifier's does. Input it cannot use
    at all (proofs that are not JSON, a nameless upload) raises BadRequestError. Each
    upload keeps its base name (the verifier compares the file's with the manifest's),
    in a folder of its own so that two uploads never overwrite each other; messages name
    the uploads, never the server's temporary folder.
    """
    with tempfile.TemporaryDirectory(prefix="audit-verify-") as tmp:
        root = Path(tmp)
        key = root / "portal.pub.pem"
        key.write_bytes(public_pem)
        paths = {
            role: _place(root / role, upload)
            for role, upload in (("file", file), ("manifest", manifest), ("sig", signature))
        }
        proofs_path = None if proofs is None else _place(root / "proofs", proofs)
        try:
            checks = offline_verify.verify_bundle(
                paths["file"], paths["manifest"], paths["sig"], key, proofs_path
            )
        except offline_verify.UnusableInputError as exc:
            raise BadRequestError(_unrooted(str(exc), root)) from None
        except Exception as exc:  # noqa: BLE001 - like the verifier's CLI: one line, no traceback
            reason = _unrooted(f"{type(exc).__name__}: {exc}", root)
            raise BadRequestError(f"cannot check ({reason})") from None
    return [replace(c, reason=_unrooted(c.reason, root)) for c in checks]


def _place(folder: Path, upload: Upload) -> Path:
    """Write an upload under its base name in `folder`; refuse a name that is no file name."""
    name = upload.name.replace("\\", "/").rsplit("/", 1)[-1]
    if name in ("", ".", "..") or "\x00" in name:
        raise BadRequestError(f"the upload {upload.name!r} has no usable file name")
    folder.mkdir()
    path = folder / name
    path.write_bytes(upload.data)
    return path


def _unrooted(text: str, root: Path) -> str:
    """`text` with the temporary folder (and each upload's own folder) taken out of paths."""
    return re.sub(re.escape(str(root)) + r"/(?:(?:file|manifest|sig|proofs)/)?", "", text)
