"""initial schema

Revision ID: 536550db24c5
Revises:
Create Date: 2026-11-24 09:00:41.176350
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '536550db24c5'
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('conference',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('conference_id', sa.String(length=128), nullable=True),
    sa.Column('tag', sa.String(length=256), nullable=True),
    sa.Column('from_number', sa.String(length=32), nullable=False),
    sa.Column('callback_url', sa.Text(), nullable=False),
    sa.Column('fallback_url', sa.Text(), nullable=False),
    sa.Column('callback_method', sa.String(length=4), nullable=False),
    sa.Column('callback_timeout_ms', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('error_status', sa.Integer(), nullable=True),
    sa.Column('error_code', sa.String(length=128), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('created_time', sa.DateTime(), nullable=True),
    sa.Column('completed_time', sa.DateTime(), nullable=True),
    sa.Column('active_members', sa.Integer(), nullable=False),
    sa.Column('active_members_at', sa.DateTime(), nullable=True),
    sa.Column('last_event_at', sa.DateTime(), nullable=True),
    sa.CheckConstraint("callback_method IN ('GET', 'POST')", name=op.f('ck_conference_callback_method')),
    sa.CheckConstraint("state IN ('pending', 'created', 'active', 'completed', 'failed')", name=op.f('ck_conference_state')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_conference')),
    sa.UniqueConstraint('conference_id', name=op.f('uq_conference_conference_id'))
    )
    with op.batch_alter_table('conference', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_conference_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_conference_state'), ['state'], unique=False)
        batch_op.create_index(batch_op.f('ix_conference_tag'), ['tag'], unique=False)

    op.create_table('rejected_delivery',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('minute', sa.DateTime(), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('last_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rejected_delivery')),
    sa.UniqueConstraint('minute', 'reason', name='uq_rejected_delivery_minute_reason')
    )
    op.create_table('event',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('conference_pk', sa.String(length=32), nullable=True),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('unknown_type', sa.Boolean(), nullable=False),
    sa.Column('conference_id', sa.String(length=128), nullable=True),
    sa.Column('member_id', sa.String(length=128), nullable=True),
    sa.Column('call_id', sa.String(length=128), nullable=True),
    sa.Column('status', sa.String(length=64), nullable=True),
    sa.Column('tag', sa.String(length=256), nullable=True),
    sa.Column('active_members', sa.Integer(), nullable=True),
    sa.Column('mute', sa.Boolean(), nullable=True),
    sa.Column('hold', sa.Boolean(), nullable=True),
    sa.Column('event_time', sa.DateTime(), nullable=True),
    sa.Column('occurred_at', sa.DateTime(), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('dedup_key', sa.String(length=64), nullable=False),
    sa.Column('first_received_at', sa.DateTime(), nullable=False),
    sa.Column('last_received_at', sa.DateTime(), nullable=False),
    sa.Column('deliveries', sa.Integer(), nullable=False),
    sa.Column('channels', sa.Integer(), nullable=False),
    sa.Column('method', sa.String(length=4), nullable=False),
    sa.Column('match', sa.String(length=16), nullable=False),
    sa.Column('match_reason', sa.String(length=64), nullable=True),
    sa.CheckConstraint("match IN ('matched', 'unmatched', 'conflict')", name=op.f('ck_event_match')),
    sa.ForeignKeyConstraint(['conference_pk'], ['conference.id'], name=op.f('fk_event_conference_pk_conference'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event')),
    sa.UniqueConstraint('dedup_key', name=op.f('uq_event_dedup_key'))
    )
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.create_index('ix_event_conference_occurred', ['conference_pk', 'occurred_at', 'id'], unique=False)
        batch_op.create_index('ix_event_match_occurred', ['match', 'occurred_at', 'id'], unique=False)
        batch_op.create_index('ix_event_provider_conference', ['conference_id'], unique=False)
        batch_op.create_index('ix_event_tag_occurred', ['tag', 'occurred_at', 'id'], unique=False)
        batch_op.create_index('ix_event_type_occurred', ['event_type', 'occurred_at', 'id'], unique=False)

    op.create_table('member',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('conference_pk', sa.String(length=32), nullable=False),
    sa.Column('member_id', sa.String(length=128), nullable=False),
    sa.Column('call_id', sa.String(length=128), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('joined_at', sa.DateTime(), nullable=True),
    sa.Column('left_at', sa.DateTime(), nullable=True),
    sa.Column('mute', sa.Boolean(), nullable=False),
    sa.Column('hold', sa.Boolean(), nullable=False),
    sa.Column('status_at', sa.DateTime(), nullable=True),
    sa.Column('last_event_at', sa.DateTime(), nullable=True),
    sa.CheckConstraint("state IN ('active', 'completed')", name=op.f('ck_member_state')),
    sa.ForeignKeyConstraint(['conference_pk'], ['conference.id'], name=op.f('fk_member_conference_pk_conference'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_member')),
    sa.UniqueConstraint('conference_pk', 'member_id', name='uq_member_conference_member')
    )


def downgrade() -> None:
    op.drop_table('member')
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index('ix_event_type_occurred')
        batch_op.drop_index('ix_event_tag_occurred')
        batch_op.drop_index('ix_event_provider_conference')
        batch_op.drop_index('ix_event_match_occurred')
        batch_op.drop_index('ix_event_conference_occurred')

    op.drop_table('event')
    op.drop_table('rejected_delivery')
    with op.batch_alter_table('conference', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_conference_tag'))
        batch_op.drop_index(batch_op.f('ix_conference_state'))
        batch_op.drop_index(batch_op.f('ix_conference_created_at'))

    op.drop_table('conference')
