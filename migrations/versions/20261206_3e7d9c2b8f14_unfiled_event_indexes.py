"""indexes of match and provider conference id hold only events not matched

Revision ID: 3e7d9c2b8f14
Revises: 8d2f4a1c6e57
Create Date: 2026-12-06 10:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '3e7d9c2b8f14'
down_revision: str | Sequence[str] | None = '8d2f4a1c6e57'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNFILED = "match != 'matched'"


def upgrade() -> None:
    op.drop_index('ix_event_match_occurred', table_name='event')
    op.drop_index('ix_event_provider_conference', table_name='event')
    op.create_index('ix_event_unfiled_occurred', 'event', ['match', 'occurred_at', 'id'],
                    sqlite_where=sa.text(UNFILED), postgresql_where=sa.text(UNFILED))
    op.create_index('ix_event_unfiled_provider_conference', 'event', ['conference_id'],
                    sqlite_where=sa.text(UNFILED), postgresql_where=sa.text(UNFILED))


def downgrade() -> None:
    op.drop_index('ix_event_unfiled_provider_conference', table_name='event')
    op.drop_index('ix_event_unfiled_occurred', table_name='event')
    op.create_index('ix_event_provider_conference', 'event', ['conference_id'])
    op.create_index('ix_event_match_occurred', 'event', ['match', 'occurred_at', 'id'])
