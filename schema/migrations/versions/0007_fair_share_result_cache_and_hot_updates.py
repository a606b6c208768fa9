"""fair share (lanes, priorities, turns), the result cache, and HOT-friendly chunk updates

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 21:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The per-statement check of migration 0005 on UPDATE copied every updated row (text and
# all) into a transition table, on every claim, record and heartbeat. A chunk never moves
# to another job, so refusing a change of job_id keeps the same guarantee for free: the
# trigger fires only for an UPDATE that names job_id, and no chunkq statement does.
TRIGGERS = """
DROP TRIGGER chunks_name_jobs_on_update ON chunks;
CREATE FUNCTION chunkq_chunks_keep_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE foreign_key_violation USING MESSAGE = 'a chunk cannot move to another job';
END $$;
CREATE TRIGGER chunks_keep_job BEFORE UPDATE OF job_id ON chunks FOR EACH ROW
    WHEN (OLD.job_id IS DISTINCT FROM NEW.job_id) EXECUTE FUNCTION chunkq_chunks_keep_job();
"""

# Lock a batch's job rows, waiting for each at most ``patience_ms`` (a peer's step holds it
# for milliseconds; waiting in the lock manager wakes the moment it is released, where
# retrying would overshoot), then take what is free without waiting (SKIP LOCKED): a row held
# longer (a paused process, an operator's session) is left to the caller to defer. Rows in
# id order, so two callers never wait on each other in a cycle. The exception block is a
# subtransaction: a timeout releases what it locked and restores lock_timeout.
LOCK_JOBS = """
CREATE FUNCTION chunkq_lock_jobs(ids uuid[], patience_ms integer) RETURNS uuid[]
LANGUAGE plpgsql AS $$
DECLARE
    saved text := current_setting('lock_timeout');
    got uuid[];
BEGIN
    BEGIN
        PERFORM set_config('lock_timeout', patience_ms || 'ms', true);
        got := ARRAY(SELECT id FROM jobs WHERE id = ANY(ids) ORDER BY id FOR UPDATE);
        PERFORM set_config('lock_timeout', saved, true);
    EXCEPTION WHEN lock_not_available THEN
        got := ARRAY(SELECT id FROM jobs WHERE id = ANY(ids) ORDER BY id FOR UPDATE SKIP LOCKED);
    END;
    RETURN got;
END $$;
"""

UNDO_TRIGGERS = """
DROP TRIGGER chunks_keep_job ON chunks;
DROP FUNCTION chunkq_chunks_keep_job();
CREATE TRIGGER chunks_name_jobs_on_update AFTER UPDATE ON chunks
    REFERENCING NEW TABLE AS new_chunks FOR EACH STATEMENT
    EXECUTE FUNCTION chunkq_chunks_name_jobs();
"""

STORAGE = (
    "autovacuum_vacuum_scale_factor",
    "autovacuum_vacuum_insert_scale_factor",
    "autovacuum_vacuum_cost_delay",
)


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("priority", sa.SmallInteger(), server_default="0", nullable=False)
    )
    op.create_check_constraint(op.f("jobs_priority_check"), "jobs", "priority BETWEEN -10 AND 10")

    op.add_column(
        "chunks", sa.Column("lane", sa.Text(), server_default="anonymous", nullable=False)
    )
    op.add_column(
        "chunks", sa.Column("priority", sa.SmallInteger(), server_default="0", nullable=False)
    )
    op.add_column("chunks", sa.Column("turn", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column(
        "chunks", sa.Column("cached", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    # The backlog takes its tenant's lane; its turns keep each job's order, 64 chunks a turn.
    op.execute(
        """UPDATE chunks c SET lane = coalesce(j.api_key_id, 'anonymous'), turn = c.seq / 64
           FROM jobs j WHERE c.job_id = j.id AND c.status IN ('pending', 'running')"""
    )
    op.drop_index("chunks_due_idx", table_name="chunks")
    op.drop_index("chunks_lease_idx", table_name="chunks")
    op.create_index(
        "chunks_fair_idx",
        "chunks",
        ["lane", sa.text("priority DESC"), "turn", sa.text("(seq / 64)"), "job_id", "seq"],
        postgresql_where=sa.text("status = 'pending' AND attempts = 0"),
    )
    op.create_index(
        "chunks_retry_idx",
        "chunks",
        ["next_attempt_at", "job_id", "seq"],
        postgresql_where=sa.text("status = 'pending' AND attempts > 0"),
    )
    op.create_index(
        "chunks_running_idx",
        "chunks",
        ["job_id", "seq"],
        postgresql_where=sa.text("status = 'running'"),
    )
    op.execute(
        "ALTER TABLE chunks SET (autovacuum_vacuum_scale_factor = 0.01,"
        " autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0)"
    )
    op.execute(TRIGGERS)
    op.execute(LOCK_JOBS)

    op.create_table(
        "result_cache",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=False),
        sa.Column("result", JSONB(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("scope", "key", name=op.f("result_cache_pkey")),
    )
    op.create_index("result_cache_created_at_idx", "result_cache", ["created_at"])


def downgrade() -> None:
    op.drop_table("result_cache")
    op.execute("DROP FUNCTION chunkq_lock_jobs(uuid[], integer)")
    op.execute(UNDO_TRIGGERS)
    op.execute(f"ALTER TABLE chunks RESET ({', '.join(STORAGE)})")
    op.drop_index("chunks_running_idx", table_name="chunks")
    op.drop_index("chunks_retry_idx", table_name="chunks")
    op.drop_index("chunks_fair_idx", table_name="chunks")
    op.create_index(
        "chunks_lease_idx",
        "chunks",
        ["lease_expires_at"],
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index(
        "chunks_due_idx",
        "chunks",
        ["next_attempt_at", "job_id", "seq"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_column("chunks", "cached")
    op.drop_column("chunks", "turn")
    op.drop_column("chunks", "priority")
    op.drop_column("chunks", "lane")
    op.drop_constraint(op.f("jobs_priority_check"), "jobs", type_="check")
    op.drop_column("jobs", "priority")
