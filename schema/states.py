"""Job and chunk lifecycles: the states, who moves a row out of each, and the legal moves.

The database mirrors these enums with CHECK constraints; tests/test_states.py keeps
the two in sync.
"""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    """States of a row in ``jobs``."""

    # Written by web's submit; the first claim of any of its chunks moves it on.
    PENDING = "PENDING"
    # Some chunk has been claimed; the worker that finishes the last chunk finalizes it.
    PROCESSING = "PROCESSING"
    # Terminal: every chunk succeeded.
    COMPLETED = "COMPLETED"
    # Terminal: some chunks succeeded, some failed.
    PARTIAL_SUCCESS = "PARTIAL_SUCCESS"
    # Terminal: every chunk failed.
    FAILED = "FAILED"
    # Terminal: a client cancelled it before it finished.
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_JOB_STATUSES


TERMINAL_JOB_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.PARTIAL_SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED}
)


class ChunkStatus(enum.StrEnum):
    """States of a row in ``chunks``."""

    # Waiting for next_attempt_at; a worker's claim moves it to running, a cancel to cancelled.
    PENDING = "pending"
    # Owned by one worker until lease_expires_at. The owner moves it to succeeded, back to
    # pending (retry or hand-back) or to failed; the rescuer does the same for a lost owner.
    RUNNING = "running"
    # Terminal: its result is recorded.
    SUCCEEDED = "succeeded"
    # Terminal: its attempts are used up, or the provider said the error is permanent.
    FAILED = "failed"
    # Terminal: its job was cancelled before it finished.
    CANCELLED = "cancelled"


JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.PROCESSING, JobStatus.CANCELLED}),
    JobStatus.PROCESSING: frozenset(
        {JobStatus.COMPLETED, JobStatus.PARTIAL_SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.PARTIAL_SUCCESS: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

CHUNK_TRANSITIONS: dict[ChunkStatus, frozenset[ChunkStatus]] = {
    ChunkStatus.PENDING: frozenset({ChunkStatus.RUNNING, ChunkStatus.CANCELLED}),
    ChunkStatus.RUNNING: frozenset(
        {ChunkStatus.SUCCEEDED, ChunkStatus.PENDING, ChunkStatus.FAILED, ChunkStatus.CANCELLED}
    ),
    ChunkStatus.SUCCEEDED: frozenset(),
    ChunkStatus.FAILED: frozenset(),
    ChunkStatus.CANCELLED: frozenset(),
}


def check_constraint(column: str, enum_cls: type[enum.StrEnum]) -> str:
    """The SQL CHECK expression that limits ``column`` to the members of ``enum_cls``."""
    values = ", ".join(f"'{member.value}'" for member in enum_cls)
    return f"{column} IN ({values})"


class ReduceStatus(enum.StrEnum):
    """States of a row in ``reductions`` (the optional document-level reduce step)."""

    # Written by the finalizing transaction; a worker's claim moves it to running.
    PENDING = "pending"
    # Owned by one worker until its lease ends; the owner (or a claim after the lease
    # expired) moves it on.
    RUNNING = "running"
    # Terminal: the document-level result is in jobs.analysis_result.reduce.
    SUCCEEDED = "succeeded"
    # Terminal: attempts used up or a permanent error; the per-chunk results stay intact.
    FAILED = "failed"


# A claim starts a reduction, its owner finishes it, retries it or hands it back, and a claim
# fails one whose lost attempts reached the limit (a claim taking over an expired lease
# leaves it running: no transition).
REDUCE_TRANSITIONS: dict[ReduceStatus, frozenset[ReduceStatus]] = {
    ReduceStatus.PENDING: frozenset({ReduceStatus.RUNNING}),
    ReduceStatus.RUNNING: frozenset(
        {ReduceStatus.SUCCEEDED, ReduceStatus.PENDING, ReduceStatus.FAILED}
    ),
    ReduceStatus.SUCCEEDED: frozenset(),
    ReduceStatus.FAILED: frozenset(),
}
