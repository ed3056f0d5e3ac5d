"""saved views: a person's named Explore filters, opened by an unguessable link id

The filter is stored as asked (the API's query parameters as JSON), never as scoped:
whoever opens a view gets it through access.scope, like every read
(audit_core/saved_views.py). One name per owner.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'saved_views',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('view_id', sa.String(length=32), nullable=False),
        sa.Column('owner', sa.String(length=320), nullable=False),
        sa.Column('name', sa.String(length=80), nullable=False),
        sa.Column('filter_json', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('view_id'),
    )
    op.create_index('ux_saved_views_owner_name', 'saved_views', ['owner', 'name'], unique=True)


def downgrade() -> None:
    op.drop_index('ux_saved_views_owner_name', 'saved_views')
    op.drop_table('saved_views')
