"""admin sign-in failures

Revision ID: a7b9afa76425
Revises: 9604335e27b6
Create Date: 2026-11-24 09:39:11.972537
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'a7b9afa76425'
down_revision: str | Sequence[str] | None = '9604335e27b6'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('signin_failure',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('minute', sa.DateTime(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signin_failure')),
    sa.UniqueConstraint('address', 'minute', name='uq_signin_failure_address_minute')
    )


def downgrade() -> None:
    op.drop_table('signin_failure')
