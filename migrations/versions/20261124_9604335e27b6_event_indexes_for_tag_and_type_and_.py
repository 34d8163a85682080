"""event indexes for tag and type, and receipt time

Revision ID: 9604335e27b6
Revises: 536550db24c5
Create Date: 2026-11-24 09:27:59.386705
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '9604335e27b6'
down_revision: str | Sequence[str] | None = '536550db24c5'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.create_index('ix_event_first_received', ['first_received_at'], unique=False)
        batch_op.create_index('ix_event_tag_type_occurred', ['tag', 'event_type', 'occurred_at', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index('ix_event_tag_type_occurred')
        batch_op.drop_index('ix_event_first_received')

