"""add api keys (tenants), idempotency keys, job metadata, and the webhook outbox

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 16:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _at(name: str, **kw: object) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), **kw)  # type: ignore[arg-type]


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=True),
        sa.Column("webhook_secret", sa.Text(), nullable=False),
        sa.Column("max_jobs_in_flight", sa.Integer(), nullable=True),
        sa.Column("max_queued_chunks", sa.Integer(), nullable=True),
        _at("created_at", server_default=sa.text("now()"), nullable=False),
        _at("revoked_at", nullable=True),
        sa.CheckConstraint(
            "(max_jobs_in_flight IS NULL OR max_jobs_in_flight > 0)"
            " AND (max_queued_chunks IS NULL OR max_queued_chunks > 0)",
            name=op.f("api_keys_limits_check"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("api_keys_pkey")),
        sa.UniqueConstraint("key_hash", name=op.f("api_keys_key_hash_key")),
    )
    # The tenant of CHUNKQ_AUTH=off: no key authenticates as it; its secret signs the
    # webhooks of the jobs it owns. gen_random_uuid draws from the server's strong random.
    op.execute(
        """INSERT INTO api_keys (id, name, webhook_secret)
           VALUES ('anonymous', 'the tenant of CHUNKQ_AUTH=off',
                   'whsec_' || encode(sha256(convert_to(
                       gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), 'base64'))"""
    )

    op.add_column("jobs", sa.Column("api_key_id", sa.Text(), nullable=True))
    op.add_column(
        "jobs",
        sa.Column("metadata", JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
    )
    op.add_column("jobs", sa.Column("webhook_url", sa.Text(), nullable=True))
    op.create_foreign_key(op.f("jobs_api_key_id_fkey"), "jobs", "api_keys", ["api_key_id"], ["id"])
    # Lists, newest first, with a keyset cursor on (created_at, id): per tenant, and every
    # job (auth off). Scanned backwards.
    op.create_index("jobs_api_key_id_created_at_id_idx", "jobs", ["api_key_id", "created_at", "id"])
    op.create_index("jobs_created_at_id_idx", "jobs", ["created_at", "id"])
    op.create_index(
        "jobs_in_flight_idx",
        "jobs",
        ["api_key_id"],
        postgresql_where=sa.text("status IN ('PENDING', 'PROCESSING')"),
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("api_key_id", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.Text(), nullable=False),
        sa.Column("job_id", UUID(as_uuid=True), nullable=False),
        sa.Column("response", JSONB(), nullable=False),
        _at("created_at", server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("idempotency_keys_api_key_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("idempotency_keys_job_id_fkey"),
            ondelete="CASCADE",
            # Checked at commit: the key is claimed before the job it names is written, so a
            # concurrent retry waits on the key rather than racing to a second job.
            deferrable=True,
            initially="DEFERRED",
        ),
        sa.PrimaryKeyConstraint("api_key_id", "key", name=op.f("idempotency_keys_pkey")),
    )
    op.create_index("idempotency_keys_created_at_idx", "idempotency_keys", ["created_at"])
    op.create_index("idempotency_keys_job_id_idx", "idempotency_keys", ["job_id"])

    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("job_id", UUID(as_uuid=True), nullable=False),
        sa.Column("api_key_id", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        _at("next_attempt_at", server_default=sa.text("now()"), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=True),
        _at("lease_expires_at", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _at("created_at", server_default=sa.text("now()"), nullable=False),
        _at("finished_at", nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'delivered', 'failed')",
            name=op.f("webhook_events_status_check"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("webhook_events_job_id_fkey"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("webhook_events_api_key_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("webhook_events_pkey")),
    )
    op.create_index(
        "webhook_events_due_idx",
        "webhook_events",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "webhook_events_lease_idx",
        "webhook_events",
        ["lease_expires_at"],
        postgresql_where=sa.text("status = 'running'"),
    )
    # One terminal event per job: the outbox insert relies on it (ON CONFLICT DO NOTHING).
    op.create_index("webhook_events_job_id_idx", "webhook_events", ["job_id"], unique=True)

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        _at("at", server_default=sa.text("now()"), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        # NULL: unknown (the attempt's worker was lost before it recorded the outcome).
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["webhook_events.id"],
            name=op.f("webhook_deliveries_event_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("webhook_deliveries_pkey")),
    )
    op.create_index(
        "webhook_deliveries_event_id_attempt_idx", "webhook_deliveries", ["event_id", "attempt"]
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_events")
    op.drop_table("idempotency_keys")
    op.drop_index("jobs_in_flight_idx", table_name="jobs")
    op.drop_index("jobs_created_at_id_idx", table_name="jobs")
    op.drop_index("jobs_api_key_id_created_at_id_idx", table_name="jobs")
    op.drop_constraint(op.f("jobs_api_key_id_fkey"), "jobs", type_="foreignkey")
    op.drop_column("jobs", "webhook_url")
    op.drop_column("jobs", "metadata")
    op.drop_column("jobs", "api_key_id")
    op.drop_table("api_keys")
