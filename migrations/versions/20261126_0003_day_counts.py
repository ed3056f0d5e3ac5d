"""day counts: records per UTC day, namespace and action, for fast exact counts

A broad filter's first count walked millions of index entries at 10M rows (322-648 ms
on PostgreSQL, BENCHMARKS.md). store.append now keeps audit_day_counts in the same
transaction as the rows; query.count sums it for the whole days a filter covers and
counts only the partial days at the edges in the log itself. This revision fills the
table from the rows already stored.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""
from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'audit_day_counts',
        sa.Column('day', sa.BigInteger(), nullable=False),
        sa.Column('namespace', sa.String(length=200), nullable=False),
        sa.Column('action', sa.String(length=200), nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('day', 'namespace', 'action'),
    )
    # floor(ts / day) on both engines: ts minus its non-negative remainder divides exactly.
    day = '(ts - ((ts % 86400000000) + 86400000000) % 86400000000) / 86400000000'
    op.execute(
        f'INSERT INTO audit_day_counts (day, namespace, action, n) '
        f'SELECT {day}, namespace, action, count(*) FROM audit_records '
        f'GROUP BY {day}, namespace, action'
    )


def downgrade() -> None:
    op.drop_table('audit_day_counts')
