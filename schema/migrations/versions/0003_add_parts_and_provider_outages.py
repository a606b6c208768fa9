"""add chunks.parts and provider_outages

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("chunks", sa.Column("parts", postgresql.JSONB(), nullable=True))
    op.create_table(
        "provider_outages",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("probes", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "probe_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("probe_delay_s", sa.Double(), server_default="1", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("provider_outages_pkey")),
    )
    op.create_index(
        "provider_outages_open_idx",
        "provider_outages",
        ["provider"],
        unique=True,
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.create_index(
        "provider_outages_started_at_idx", "provider_outages", ["started_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("provider_outages_started_at_idx", table_name="provider_outages")
    op.drop_index(
        "provider_outages_open_idx",
        table_name="provider_outages",
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.drop_table("provider_outages")
    op.drop_column("chunks", "parts")
