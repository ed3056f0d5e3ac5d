"""Per-engine fast paths behind one interface; None means 'use the plain path'.

Every fast path must produce exactly the bytes of the plain path (tests compare them).
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Connection

from .filters import AuditFilter


def csv_chunks(conn: Connection, flt: AuditFilter, upto_seq: int) -> Iterator[bytes] | None:
    """A faster CSV writer for this engine, or None."""
    return None
