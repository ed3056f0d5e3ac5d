"""Signed manifests for exports on every channel (cli, ui, api, job): DESIGN.md "Evidence" 4.

An export's manifest is signed once its bytes are known (size and SHA-256, hashed while
they were written), at the export's own snapshot, under the log's append lock so that
`previousManifest` chains manifests in signing order. The export id is the job's id, or a
fresh `export-YYYYMMDD-NNN` for immediate exports (reserved before the first byte, so a
streamed export can announce where its manifest will be).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from . import evidence, query, store
from .export import ExportPlan
from .record import format_instant

SIG_SUFFIX = ".manifest.sig"
JSON_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class Requester:
    """Who asked, as the manifest records it."""

    user: str
    role: str
    channel: str  # ui | api | cli | job

    def document(self) -> dict[str, str]:
        if self.channel not in evidence.CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(evidence.CHANNELS)}")
        return {"user": self.user, "role": self.role, "channel": self.channel}


def next_export_id(conn: Connection, plan: ExportPlan) -> str:
    """The next export id of the plan's day; the caller holds the log's lock (lock_head)."""
    return store.next_id(conn, f"export-{plan.exported_at:%Y%m%d}")


def query_document(plan: ExportPlan, description: str) -> dict[str, Any]:
    """The manifest's query: resolved bounds, the lists, the format, the raw parameters."""
    flt = plan.filter
    assert flt.end is not None, "plan the export first: its end must be resolved"
    actions = [*flt.actions, *(f"{p}*" for p in flt.action_prefixes)]
    return {
        "from": None if flt.start is None else format_instant(flt.start),
        "to": format_instant(flt.end),
        "action": actions,
        "user": list(flt.users),
        "namespace": list(flt.namespaces),
        "format": plan.fmt,
        "description": description,
    }


def sign(
    engine: Engine,
    plan: ExportPlan,
    requester: Requester,
    *,
    export_id: str | None = None,
    description: str,
    file_name: str,
    file_bytes: int,
    file_sha256: str,
) -> evidence.SignedManifest:
    """Sign and keep the manifest of an export whose file is written."""
    with engine.begin() as conn:
        store.lock_head(conn)
        export_id = export_id or next_export_id(conn, plan)
        first, last = query.edge_ids(conn, plan.filter, plan.upto_seq)
        return evidence.sign_manifest(
            conn,
            export_id=export_id,
            exported_at=format_instant(plan.exported_at),
            requested_by=requester.document(),
            query=query_document(plan, description),
            upto_seq=plan.upto_seq,
            count=plan.total,
            first_id=first,
            last_id=last,
            file_name=Path(file_name).name,
            file_bytes=file_bytes,
            file_sha256=file_sha256,
        )


def paths_beside(path: Path) -> tuple[Path, Path]:
    """FILE.manifest.json and FILE.manifest.sig for an export written to FILE."""
    return path.with_name(path.name + JSON_SUFFIX), path.with_name(path.name + SIG_SUFFIX)


def paths_for(manifest_path: Path) -> tuple[Path, Path]:
    """A manifest named by --manifest PATH, and its signature beside it."""
    name = manifest_path.name
    stem = name[: -len(JSON_SUFFIX)] if name.endswith(JSON_SUFFIX) else name
    return manifest_path, manifest_path.with_name(stem + SIG_SUFFIX)


def write(signed: evidence.SignedManifest, manifest_path: Path, sig_path: Path) -> None:
    """Write the manifest's exact bytes and its raw 64-byte signature."""
    manifest_path.write_bytes(signed.manifest)
    sig_path.write_bytes(signed.signature)
