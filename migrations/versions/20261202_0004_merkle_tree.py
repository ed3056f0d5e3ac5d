"""merkle tree: every record's leaf index, stored subtrees, the signed tree head, checkpoints
and export manifests (DESIGN.md "Evidence")

Leaves are the records in insertion order (the key's order), numbered densely from 0 even
where the key has gaps. The tree is built here from the records already stored, in
batches, with flat memory; db.migrate hands in the signer, and the head is signed when
there is one (otherwise the first append signs it).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

from audit_core import tree

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None
BATCH = 20_000


def upgrade() -> None:
    with op.batch_alter_table('audit_records') as batch:
        batch.add_column(sa.Column('leaf', sa.BigInteger(), nullable=True))
    with op.batch_alter_table('chain_head') as batch:
        batch.add_column(sa.Column('tree_size', sa.BigInteger(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('tree_root', sa.LargeBinary(length=32), nullable=True))
        batch.add_column(sa.Column('signed_head', sa.Text(), nullable=True))
        batch.add_column(sa.Column('last_manifest', sa.String(length=64), nullable=True))
    op.create_table(
        'merkle_nodes',
        sa.Column('level', sa.SmallInteger(), nullable=False),
        sa.Column('idx', sa.BigInteger(), nullable=False),
        sa.Column('hash', sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint('level', 'idx'),
    )
    op.create_table(
        'checkpoints',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('tree_size', sa.BigInteger(), nullable=False),
        sa.Column('root', sa.LargeBinary(length=32), nullable=False),
        sa.Column('note', sa.Text(), nullable=False),
        sa.Column('reason', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_checkpoints_tree_size', 'checkpoints', ['tree_size'])
    op.create_table(
        'export_manifests',
        sa.Column('export_id', sa.String(length=64), nullable=False),
        sa.Column('requested_by', sa.String(length=320), nullable=False),
        sa.Column('channel', sa.String(length=8), nullable=False),
        sa.Column('file_name', sa.String(length=255), nullable=False),
        sa.Column('manifest', sa.LargeBinary(), nullable=False),
        sa.Column('signature', sa.LargeBinary(length=64), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('sha256'),
    )
    op.create_index('ix_export_manifests_export_id', 'export_manifests', ['export_id'])
    op.create_index(
        'ix_export_manifests_requested_by', 'export_manifests', ['requested_by']
    )
    conn = op.get_bind()
    op.create_index('ux_audit_leaf', 'audit_records', ['leaf'], unique=True)
    size = _number_and_build(conn)
    if size:
        from audit_core import evidence

        evidence.advance_head(conn, size)


def _number_and_build(conn: sa.Connection) -> int:
    """Give every record its leaf (key order) and store the tree's complete subtrees."""
    conn.execute(
        sa.text(
            'UPDATE audit_records SET leaf = r.n - 1 FROM '
            '(SELECT seq AS s, row_number() OVER (ORDER BY seq) AS n FROM audit_records) AS r '
            'WHERE audit_records.seq = r.s'
        )
    )
    builder = tree.Builder()
    nodes = sa.table('merkle_nodes', sa.column('level'), sa.column('idx'), sa.column('hash'))
    while True:
        rows = conn.execute(
            sa.text('SELECT checksum FROM audit_records WHERE leaf >= :a AND leaf < :b ORDER BY leaf'),
            {'a': builder.size, 'b': builder.size + BATCH},
        ).all()
        if not rows:
            return builder.size
        builder.add(tree.leaf_of(r.checksum) for r in rows)
        done = builder.take()
        if done:
            conn.execute(nodes.insert(), [{'level': a, 'idx': b, 'hash': h} for a, b, h in done])


def downgrade() -> None:
    op.drop_table('export_manifests')
    op.drop_index('ix_checkpoints_tree_size', 'checkpoints')
    op.drop_table('checkpoints')
    op.drop_table('merkle_nodes')
    op.drop_index('ux_audit_leaf', 'audit_records')
    with op.batch_alter_table('chain_head') as batch:
        for name in ('last_manifest', 'signed_head', 'tree_root', 'tree_size'):
            batch.drop_column(name)
    with op.batch_alter_table('audit_records') as batch:
        batch.drop_column('leaf')
