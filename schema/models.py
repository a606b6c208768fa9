"""SQLAlchemy models of the three tables: jobs, their chunks, and every failed attempt.

The models are the schema's source of truth for ``alembic check``; the hot paths in
``schema.queue`` use SQL over psycopg, not ORM objects.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Text,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schema.states import ChunkStatus, JobStatus, ReduceStatus, check_constraint

# A job's priority: higher runs first among its tenant's jobs.
MIN_PRIORITY, MAX_PRIORITY = -10, 10

NAMING = {
    "ix": "%(table_name)s_%(column_0_N_name)s_idx",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "ck": "%(table_name)s_%(constraint_name)s_check",
    "fk": "%(table_name)s_%(column_0_N_name)s_fkey",
    "pk": "%(table_name)s_pkey",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _now() -> Any:
    return func.now()


class ApiKey(Base):
    """A tenant: the key a client sends (only its SHA-256 is kept) and the secret that signs
    its webhooks. ``anonymous`` is the tenant of ``CHUNKQ_AUTH=off``; no key opens it."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(
            "(max_jobs_in_flight IS NULL OR max_jobs_in_flight > 0)"
            " AND (max_queued_chunks IS NULL OR max_queued_chunks > 0)",
            name="limits",
        ),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[str | None] = mapped_column(Text, unique=True)
    webhook_secret: Mapped[str] = mapped_column(Text)
    # Per-key limits, answered with 429; NULL: none.
    max_jobs_in_flight: Mapped[int | None] = mapped_column(Integer)
    max_queued_chunks: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    """One submitted text; its counters always equal the counts of its chunks' final states."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(check_constraint("status", JobStatus), name="status"),
        CheckConstraint(
            "chunks_total > 0 AND chunks_completed >= 0 AND chunks_failed >= 0"
            " AND chunks_completed + chunks_failed <= chunks_total",
            name="counters",
        ),
        # Pruning finished work scans only finished jobs, oldest first.
        Index(
            "jobs_finished_at_idx", "finished_at", postgresql_where=text("finished_at IS NOT NULL")
        ),
        # Lists, newest first, keyset-paginated on (created_at, id): a tenant's, and every
        # job's (auth off). Scanned backwards.
        Index("jobs_api_key_id_created_at_id_idx", "api_key_id", "created_at", "id"),
        Index("jobs_created_at_id_idx", "created_at", "id"),
        # A tenant's jobs in flight, for its limits.
        CheckConstraint(f"priority BETWEEN {MIN_PRIORITY} AND {MAX_PRIORITY}", name="priority"),
        Index(
            "jobs_in_flight_idx",
            "api_key_id",
            postgresql_where=text("status IN ('PENDING', 'PROCESSING')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    status: Mapped[str] = mapped_column(Text, server_default=JobStatus.PENDING.value)
    chunks_total: Mapped[int] = mapped_column(Integer)
    chunks_completed: Mapped[int] = mapped_column(Integer, server_default="0")
    chunks_failed: Mapped[int] = mapped_column(Integer, server_default="0")
    max_chunk_chars: Mapped[int] = mapped_column(Integer)
    text_chars: Mapped[int] = mapped_column(Integer)
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    analysis_result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # The tenant that made the job; NULL for jobs made before tenants existed.
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))
    metadata_: Mapped[dict[str, str]] = mapped_column(
        "metadata", JSONB, server_default=text("'{}'::jsonb")
    )
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # Orders the jobs of one tenant: its chunks go before those of the tenant's jobs of a
    # lower priority; other tenants' turns are not affected.
    priority: Mapped[int] = mapped_column(SmallInteger, server_default="0")


class Chunk(Base):
    """One segment of a job's text and the state of its analysis; the queue's unit of work."""

    __tablename__ = "chunks"
    __table_args__ = (
        CheckConstraint(check_constraint("status", ChunkStatus), name="status"),
        CheckConstraint("start_offset >= 0 AND end_offset > start_offset", name="offsets"),
        CheckConstraint("attempts >= 0", name="attempts"),
        # The fair claim: chunks never tried yet, per lane (tenant), its higher priorities
        # first, then by turn, so every job of a lane with due work gets a turn each round;
        # within a turn, jobs that have had fewer turns first (seq / FAIR_QUANTUM, 64 in
        # schema.queue.sql). Partial, so it holds only the backlog, not the finished rows.
        Index(
            "chunks_fair_idx",
            "lane",
            text("priority DESC"),
            "turn",
            text("(seq / 64)"),
            "job_id",
            "seq",
            postgresql_where=text("status = 'pending' AND attempts = 0"),
        ),
        # Retries: chunks waiting out their backoff, the soonest due first, so a claim stops
        # at the first one not due yet instead of walking past every one still waiting.
        Index(
            "chunks_retry_idx",
            "next_attempt_at",
            "job_id",
            "seq",
            postgresql_where=text("status = 'pending' AND attempts > 0"),
        ),
        # Running chunks: the rescuer's and the shared cap's, and each fenced write's way to
        # its rows. The lease is not a key, so a heartbeat (which only moves the lease) is a
        # HOT update.
        Index("chunks_running_idx", "job_id", "seq", postgresql_where=text("status = 'running'")),
        {
            "postgresql_with": {
                "fillfactor": "80",
                # A queue's partial indexes gather dead entries at their head with every
                # claim; vacuum them often rather than per 20 % of a table of millions.
                "autovacuum_vacuum_scale_factor": "0.01",
                "autovacuum_vacuum_insert_scale_factor": "0.01",
                "autovacuum_vacuum_cost_delay": "0",
            }
        },
    )

    # A job's id; no foreign key: statement-level triggers (migration 0005) check that every
    # chunk names a job and delete a job's chunks with it, without a check per COPYed row.
    job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    start_offset: Mapped[int] = mapped_column(Integer)
    end_offset: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=ChunkStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now()
    )
    worker_id: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # The pieces of a split chunk that earlier attempts finished ({"start", "end", ...result}),
    # so a retry asks only for the rest; cleared when the chunk succeeds.
    parts: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    # The provider (its name) that produced ``result``: a job is merged by each result's own.
    provider: Mapped[str | None] = mapped_column(Text)
    # Fair share: the tenant whose claims this chunk takes its turn among (its job's
    # ``api_key_id``, or ``anonymous``), its job's priority, and its turn in the lane's
    # round robin (``schema.queue.enqueue``).
    lane: Mapped[str] = mapped_column(Text, server_default="anonymous")
    priority: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    turn: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # The result came from the result cache, not from a provider call.
    cached: Mapped[bool] = mapped_column(Boolean, server_default=false())


class ChunkAttempt(Base):
    """One failed attempt of one chunk: the source of the API's ``errors`` list."""

    __tablename__ = "chunk_attempts"
    __table_args__ = (
        ForeignKeyConstraint(
            ["job_id", "seq"], ["chunks.job_id", "chunks.seq"], ondelete="CASCADE"
        ),
        Index("chunk_attempts_job_id_seq_attempt_idx", "job_id", "seq", "attempt"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    seq: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    error_class: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class Reduction(Base):
    """The optional reduce step of one finished job: its own retried unit of work, so a
    failure here never touches the job's status or its per-chunk results."""

    __tablename__ = "reductions"
    __table_args__ = (
        CheckConstraint(check_constraint("status", ReduceStatus), name="status"),
        Index("reductions_due_idx", "next_attempt_at", postgresql_where=text("status = 'pending'")),
    )

    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[str] = mapped_column(Text, server_default=ReduceStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now()
    )
    worker_id: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class ProviderOutage(Base):
    """A period in which a provider endpoint was unreachable: the circuit breaker's shared
    state. A row with no ``ended_at`` is the open circuit; at most one per provider."""

    __tablename__ = "provider_outages"
    __table_args__ = (
        Index(
            "provider_outages_open_idx",
            "provider",
            unique=True,
            postgresql_where=text("ended_at IS NULL"),
        ),
        # Job reports look up the outages that overlap a job's lifetime.
        Index("provider_outages_started_at_idx", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Calls that failed for want of the provider while the circuit was open, and the last
    # error they saw.
    failures: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    probes: Mapped[int] = mapped_column(Integer, server_default="0")
    # When the next probe call may start, and the backoff that set it.
    probe_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    probe_delay_s: Mapped[float] = mapped_column(Double, server_default="1")


class IdempotencyKey(Base):
    """A POST's ``Idempotency-Key`` within its tenant: the job it made and the answer given,
    so a retry gets the same 202. The primary key makes concurrent retries make one job."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        Index("idempotency_keys_created_at_idx", "created_at"),
        Index("idempotency_keys_job_id_idx", "job_id"),
    )

    api_key_id: Mapped[str] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    request_hash: Mapped[str] = mapped_column(Text)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("jobs.id", ondelete="CASCADE", deferrable=True, initially="DEFERRED"),
    )
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class WebhookEvent(Base):
    """The outbox: a job's terminal event, written in the transaction that made the job
    terminal, delivered (at least once) by the workers. ``id`` is the ``webhook-id``."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'running', 'delivered', 'failed')", name="status"),
        Index(
            "webhook_events_due_idx", "next_attempt_at", postgresql_where=text("status = 'pending'")
        ),
        Index(
            "webhook_events_lease_idx",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
        ),
        # One terminal event per job.
        Index("webhook_events_job_id_idx", "job_id", unique=True),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE")
    )
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text)
    # The exact bytes that are signed and sent, the same on every attempt.
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now()
    )
    worker_id: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookDelivery(Base):
    """One attempt to deliver one webhook event: what the target answered, or why not."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("webhook_deliveries_event_id_attempt_idx", "event_id", "attempt"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # None: unknown, the attempt's worker was lost before it recorded the outcome.
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(Text)


class CachedResult(Base):
    """A provider's result for one chunk text, reused for identical chunks instead of a
    provider call. ``key`` is the SHA-256 of the provider's identity (name, model, prompt,
    output schema) and the text; ``scope`` keeps each tenant's results its own (``*``:
    the shared cache an operator may turn on)."""

    __tablename__ = "result_cache"
    __table_args__ = (Index("result_cache_created_at_idx", "created_at"),)

    scope: Mapped[str] = mapped_column(Text, primary_key=True)
    key: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSONB)
    provider: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


metadata = Base.metadata
