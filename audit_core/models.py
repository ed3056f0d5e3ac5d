"""SQLAlchemy 2.x typed models: the audit record, the chain head, jobs, users, tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only aliases ROWID (and so autoincrements) for a column typed exactly INTEGER.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Store instants as naive UTC; hand them back timezone-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC instant")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class AuditRecord(Base):
    """One audit event: the seed's fields plus ordering, search and chain columns."""

    __tablename__ = "audit_records"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    record_id: Mapped[str] = mapped_column("id", String(64), unique=True)
    ts: Mapped[int] = mapped_column(BigInteger)  # microseconds since the epoch, UTC
    timestamp: Mapped[str] = mapped_column(String(40))  # as exported: ISO 8601 with Z
    action: Mapped[str] = mapped_column(String(200))
    user: Mapped[str] = mapped_column(String(320))
    user_lc: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(200))
    resource: Mapped[str] = mapped_column(Text)
    resource_type: Mapped[str] = mapped_column("resourceType", String(200))
    namespace: Mapped[str] = mapped_column(String(200))
    source_ip: Mapped[str] = mapped_column("sourceIP", String(64))
    checksum: Mapped[str] = mapped_column(String(71))
    chain: Mapped[str] = mapped_column(String(64))
    # The record's 0-based place in the Merkle tree (insertion order, dense; migration 0004).
    leaf: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (
        Index("ux_audit_leaf", "leaf", unique=True),
        Index("ix_audit_ts", "ts", "seq"),
        # The filter indexes carry the other filter columns too (migration 0002): counts
        # under any mix of filters read one index alone.
        Index("ix_audit_ns_ts", "namespace", "ts", "seq", "action", "user_lc"),
        Index("ix_audit_action_ts", "action", "ts", "seq", "namespace", "user_lc"),
        Index("ix_audit_user_ts", "user_lc", "ts", "seq", "namespace", "action"),
    )


class DayCount(Base):
    """Records per UTC day, namespace and action, kept by store.append (migration 0003).

    A broad filter's exact count sums these for the whole days in its range and counts
    only the partial days at its edges in the log itself (query.count).
    """

    __tablename__ = "audit_day_counts"

    day: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # floor(ts / one day)
    namespace: Mapped[str] = mapped_column(String(200), primary_key=True)
    action: Mapped[str] = mapped_column(String(200), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


class ActionTotal(Base):
    """Records per namespace and action over the whole log, kept beside the day counts
    (migration 0006): a filter unbounded in time is counted from these, not from a sum
    over every day the log covers, which grows with its history (bench/bench_scale.py)."""

    __tablename__ = "audit_totals"

    namespace: Mapped[str] = mapped_column(String(200), primary_key=True)
    action: Mapped[str] = mapped_column(String(200), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


class UserTotal(Base):
    """Records per user (lower-cased) over the whole log (migration 0006): "everything this
    person did" is counted from here instead of walking all of their index entries."""

    __tablename__ = "audit_user_totals"

    user_lc: Mapped[str] = mapped_column(String(320), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


class ChainHead(Base):
    """The single row that serialises appends and remembers the chain's tip."""

    __tablename__ = "chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    appends: Mapped[int] = mapped_column(BigInteger, default=0)
    # The Merkle tree's size and root, and their signed note (re-signed by every append).
    tree_size: Mapped[int] = mapped_column(BigInteger, default=0)
    tree_root: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    signed_head: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Hex SHA-256 of the newest signed export manifest: the next one's previousManifest.
    last_manifest: Mapped[str | None] = mapped_column(String(64), nullable=True)


class MerkleNode(Base):
    """A complete subtree's hash at level >= merkle.TILE_LEVEL: (level, idx) covers leaves
    [idx * 2**level, (idx + 1) * 2**level). Smaller subtrees are hashed from the records."""

    __tablename__ = "merkle_nodes"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class Checkpoint(Base):
    """A kept signed checkpoint: periodic, for an export's snapshot, or on demand."""

    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    tree_size: Mapped[int] = mapped_column(BigInteger, index=True)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ExportManifest(Base):
    """A signed export manifest, kept so jobs and streamed exports can serve theirs."""

    __tablename__ = "export_manifests"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    # A job's attempt that lost its lease may have signed one too: the newest one counts.
    export_id: Mapped[str] = mapped_column(String(64), index=True)
    # Copied out of the manifest, so a person's signed exports are listed without parsing.
    requested_by: Mapped[str] = mapped_column(String(320), index=True)
    channel: Mapped[str] = mapped_column(String(8))
    file_name: Mapped[str] = mapped_column(String(255))
    manifest: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[bytes] = mapped_column(LargeBinary(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class IdCounter(Base):
    """Daily sequence numbers for generated ids (audit-YYYYMMDD-NNN, export-YYYYMMDD-NNN)."""

    __tablename__ = "id_counters"

    prefix: Mapped[str] = mapped_column(String(40), primary_key=True)
    last: Mapped[int] = mapped_column(BigInteger, default=0)


class ExportJob(Base):
    """A background export: its request, its lease and its file."""

    __tablename__ = "export_jobs"

    job_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    requested_by: Mapped[str] = mapped_column(String(320), index=True)
    requested_role: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str] = mapped_column(Text)  # JSON: granted namespaces at enqueue, or null
    filter_json: Mapped[str] = mapped_column(Text)
    filter_text: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(8))
    compression: Mapped[str] = mapped_column(String(8), default="none")
    estimated_records: Mapped[int] = mapped_column(BigInteger)
    snapshot_seq: Mapped[int] = mapped_column(BigInteger)
    source_ip: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    rows_written: Mapped[int] = mapped_column(BigInteger, default=0)
    file_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    file_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    file_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PortalUser(Base):
    """A person who may sign in: role and namespace grants."""

    __tablename__ = "portal_users"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)  # lower-case
    role: Mapped[str] = mapped_column(String(16))
    namespaces: Mapped[str] = mapped_column(Text)  # "*" or comma list
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiToken(Base):
    """An API bearer token, kept only as a hash with a short visible prefix."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    email: Mapped[str] = mapped_column(String(320), index=True)
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SavedView(Base):
    """A person's named Explore filter (migration 0005), reopened by its unguessable id.

    The filter is kept as asked, not as scoped: whoever opens it gets it through
    access.scope, as every read does (audit_core/saved_views.py).
    """

    __tablename__ = "saved_views"

    id: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    view_id: Mapped[str] = mapped_column(String(32), unique=True)  # the link's id
    owner: Mapped[str] = mapped_column(String(320))  # the saver's email (or local-admin)
    name: Mapped[str] = mapped_column(String(80))
    filter_json: Mapped[str] = mapped_column(Text)  # AuditFilter.to_json(): the API's params
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ux_saved_views_owner_name", "owner", "name", unique=True),)


# Typed handles on the tables for Core statements (Model.__table__ is typed as FromClause).
AUDIT = cast(Table, AuditRecord.__table__)
HEAD = cast(Table, ChainHead.__table__)
DAYS = cast(Table, DayCount.__table__)
TOTALS = cast(Table, ActionTotal.__table__)
USER_TOTALS = cast(Table, UserTotal.__table__)
COUNTERS = cast(Table, IdCounter.__table__)
JOBS = cast(Table, ExportJob.__table__)
USERS = cast(Table, PortalUser.__table__)
TOKENS = cast(Table, ApiToken.__table__)
NODES = cast(Table, MerkleNode.__table__)
CHECKPOINTS = cast(Table, Checkpoint.__table__)
MANIFESTS = cast(Table, ExportManifest.__table__)
SAVED_VIEWS = cast(Table, SavedView.__table__)
