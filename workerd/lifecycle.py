"""A job's lifecycle as the workers log it: once when it is first claimed and once when it
is finalized, at INFO, so the log grows by job and not by chunk."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping

from schema.queue import ClaimedChunk, Finalized

log = logging.getLogger("workerd.jobs")


def first_claims(chunks: Iterable[ClaimedChunk]) -> None:
    """Log the jobs this claim started (moved PENDING -> PROCESSING), each once."""
    counts: dict[uuid.UUID, int] = {}
    for chunk in chunks:
        if chunk.started:
            counts[chunk.job_id] = counts.get(chunk.job_id, 0) + 1
    for job_id, n in counts.items():
        log.info(
            "job %s first claim (chunks taken: %d)",
            job_id,
            n,
            extra={"job_id": job_id, "chunks": n},
        )


def finalized(jobs: Mapping[uuid.UUID, Finalized]) -> None:
    """Log each job a committed transaction finalized: its status, counts and duration."""
    for job_id, end in jobs.items():
        log.info(
            "job %s finalized: %s, %d succeeded, %d failed in %.3fs",
            job_id,
            end.status.value,
            end.succeeded,
            end.failed,
            end.duration_s,
            extra={
                "job_id": job_id,
                "status": end.status.value,
                "succeeded": end.succeeded,
                "failed": end.failed,
                "cancelled": 0,
                "duration_s": round(end.duration_s, 3),
            },
        )
