"""add chunks.provider

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The provider that produced each result, so a job whose workers changed provider
    # mid-way is merged by each result's own provider. NULL: recorded before this column.
    op.add_column("chunks", sa.Column("provider", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("chunks", "provider")
