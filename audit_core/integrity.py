"""Prove the log unchanged: every checksum, and the hash chain in insertion order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, select

from .models import AUDIT as T
from .models import HEAD
from .record import FIELDS, chain_next, compute_checksum
from .store import day_counts_differ

BATCH = 10_000


@dataclass(frozen=True)
class VerifyResult:
    checked: int
    bad_id: str | None = None
    reason: str | None = None
    place: str = "end of the log"  # where it failed, when no single record is to blame

    @property
    def ok(self) -> bool:
        return self.bad_id is None and self.reason is None


def verify(conn: Connection, progress: Callable[[int], None] | None = None) -> VerifyResult:
    """Walk every record in key order; return the first that breaks a checksum or the chain."""
    cols = [T.c.seq, *(T.c[f] for f in FIELDS), T.c.chain]
    prev = "0" * 64
    last_seq = 0
    checked = 0
    while True:
        rows = conn.execute(
            select(*cols).where(T.c.seq > last_seq).order_by(T.c.seq).limit(BATCH)
        ).all()
        if not rows:
            break
        for row in rows:
            fields = dict(zip(FIELDS, row[1:-1], strict=True))
            if compute_checksum(fields) != fields["checksum"]:
                return VerifyResult(checked, fields["id"], "its fields do not match its checksum")
            prev = chain_next(prev, fields["checksum"])
            if prev != row[-1]:
                return VerifyResult(
                    checked,
                    fields["id"],
                    "the hash chain breaks here (a record before it "
                    "was removed, inserted or changed)",
                )
            checked += 1
        last_seq = rows[-1][0]
        if progress:
            progress(checked)
    head = conn.execute(select(HEAD.c.last_hash).where(HEAD.c.id == 1)).scalar()
    if head != prev:
        return VerifyResult(
            checked,
            None,
            "the newest records do not reach the chain's recorded tip "
            "(records were removed from the end)",
        )
    if day_counts_differ(conn):
        return VerifyResult(
            checked,
            None,
            "they do not match the records, so counts shown may be wrong; "
            "`python -m audit_core verify --recount` rebuilds them from the records",
            place="day counts",
        )
    return VerifyResult(checked)
