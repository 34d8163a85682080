"""admin sessions kept server-side

Revision ID: 8d2f4a1c6e57
Revises: 5c1e2f7a9b30
Create Date: 2026-12-06 04:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '8d2f4a1c6e57'
down_revision: str | Sequence[str] | None = '5c1e2f7a9b30'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('admin_session',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_admin_session'))
    )


def downgrade() -> None:
    op.drop_table('admin_session')
