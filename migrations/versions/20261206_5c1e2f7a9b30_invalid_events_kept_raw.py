"""invalid events kept as received; readiness write probe

Revision ID: 5c1e2f7a9b30
Revises: a7b9afa76425
Create Date: 2026-12-06 03:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '5c1e2f7a9b30'
down_revision: str | Sequence[str] | None = 'a7b9afa76425'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.add_column(sa.Column('raw', sa.Text(), nullable=True))
        batch_op.drop_constraint(op.f('ck_event_match'), type_='check')
        batch_op.create_check_constraint(
            op.f('ck_event_match'), "match IN ('matched', 'unmatched', 'conflict', 'invalid')")
    op.create_table('readiness_probe',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('checked_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_readiness_probe'))
    )


def downgrade() -> None:
    op.drop_table('readiness_probe')
    op.execute("DELETE FROM event WHERE match = 'invalid'")
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_event_match'), type_='check')
        batch_op.create_check_constraint(
            op.f('ck_event_match'), "match IN ('matched', 'unmatched', 'conflict')")
        batch_op.drop_column('raw')
