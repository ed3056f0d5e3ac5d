"""action totals: records per namespace and action over the whole log

A filter unbounded in time (no `from`: "everything in payments") was counted by summing
audit_day_counts over every day the log covers, which grows with the log's history
(bench/bench_scale.py, BENCHMARKS.md "Scale"). store.append now keeps audit_totals in the same transaction as
the rows and the day counts; query.count takes the whole log's part from it. This
revision fills it from the day counts (verify checks both against the rows).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'audit_totals',
        sa.Column('namespace', sa.String(length=200), nullable=False),
        sa.Column('action', sa.String(length=200), nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('namespace', 'action'),
    )
    op.execute(
        'INSERT INTO audit_totals (namespace, action, n) '
        'SELECT namespace, action, sum(n) FROM audit_day_counts GROUP BY namespace, action'
    )
    op.create_table(
        'audit_user_totals',
        sa.Column('user_lc', sa.String(length=320), nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('user_lc'),
    )
    op.execute(
        'INSERT INTO audit_user_totals (user_lc, n) '
        'SELECT user_lc, count(*) FROM audit_records GROUP BY user_lc'
    )


def downgrade() -> None:
    op.drop_table('audit_user_totals')
    op.drop_table('audit_totals')
