"""create jobs, chunks and chunk_attempts

Revision ID: 0001
Revises:
Create Date: 2026-11-28 22:50:51.483419
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("status", sa.Text(), server_default="PENDING", nullable=False),
        sa.Column("chunks_total", sa.Integer(), nullable=False),
        sa.Column("chunks_completed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("chunks_failed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_chunk_chars", sa.Integer(), nullable=False),
        sa.Column("text_chars", sa.Integer(), nullable=False),
        sa.Column(
            "options",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("analysis_result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'PARTIAL_SUCCESS', 'FAILED', 'CANCELLED')",
            name=op.f("jobs_status_check"),
        ),
        sa.CheckConstraint(
            "chunks_total > 0 AND chunks_completed >= 0 AND chunks_failed >= 0 AND chunks_completed + chunks_failed <= chunks_total",
            name=op.f("jobs_counters_check"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("jobs_pkey")),
    )
    op.create_index(
        "jobs_finished_at_idx",
        "jobs",
        ["finished_at"],
        unique=False,
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )
    op.create_table(
        "chunks",
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("start_offset", sa.Integer(), nullable=False),
        sa.Column("end_offset", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("chunks_status_check"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("chunks_attempts_check")),
        sa.CheckConstraint(
            "start_offset >= 0 AND end_offset > start_offset", name=op.f("chunks_offsets_check")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("chunks_job_id_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "seq", name=op.f("chunks_pkey")),
        postgresql_with={"fillfactor": "80"},
    )
    op.create_index(
        "chunks_due_idx",
        "chunks",
        ["next_attempt_at", "job_id", "seq"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "chunks_lease_idx",
        "chunks",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_table(
        "chunk_attempts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("error_class", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["job_id", "seq"],
            ["chunks.job_id", "chunks.seq"],
            name=op.f("chunk_attempts_job_id_seq_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("chunk_attempts_pkey")),
    )
    op.create_index(
        "chunk_attempts_job_id_seq_attempt_idx",
        "chunk_attempts",
        ["job_id", "seq", "attempt"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("chunk_attempts_job_id_seq_attempt_idx", table_name="chunk_attempts")
    op.drop_table("chunk_attempts")
    op.drop_index(
        "chunks_lease_idx", table_name="chunks", postgresql_where=sa.text("status = 'running'")
    )
    op.drop_index(
        "chunks_due_idx", table_name="chunks", postgresql_where=sa.text("status = 'pending'")
    )
    op.drop_table("chunks")
    op.drop_index(
        "jobs_finished_at_idx",
        table_name="jobs",
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )
    op.drop_table("jobs")
