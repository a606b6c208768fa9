"""The queue's shared SQL vocabulary: the wake-up channel, the advisory-lock keys, the
``now`` parameter, and the serialisation every write of a result uses."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from schema import clock

if TYPE_CHECKING:
    from schema.queue.outcomes import ClaimedChunk

NOTIFY_CHANNEL = "chunkq_work"
# The payload that says a job was cancelled: workers check their leases at once.
CANCEL_NOTICE = "cancel"
# pg_advisory_xact_lock key serialising capped claims (an arbitrary constant: "chunkq").
CAP_LOCK_KEY = 0x6368756E6B71
# pg_try_advisory_xact_lock key: one rescuer at a time across the fleet ("chunkqr").
RESCUE_LOCK_KEY = 0x6368756E6B7172

# The lane of jobs with no tenant (CHUNKQ_AUTH=off, or made before tenants existed).
ANONYMOUS_LANE = "anonymous"
# Fair share: a job's chunks take turns FAIR_QUANTUM at a time, about one claim of a worker
# at --concurrency 64, so a claim mostly takes one job's turn and its outcomes update one
# job row: workers recording at once rarely meet on a row. Within a turn, jobs that started
# later go first (``seq / FAIR_QUANTUM`` is how many turns a job has had), so a new job's
# first turn comes before the others' current one. chunks_fair_idx holds the same constant
# (migration 0007): change both together.
FAIR_QUANTUM = 64

# `now` as a parameter, or the database's clock when the caller passes None.
NOW = clock.NOW


# The rows of a batch (the CTE ``input``: job_id, seq, attempt, ...) that this worker still
# holds for those attempts (the fence: running, this attempt, this owner), each found by its
# primary key, with its ctid for the write that follows (``WHERE c.ctid = m.tid``). A LATERAL
# subquery the planner cannot flatten (LIMIT) fixes the join order whatever plan a prepared
# statement gets: a generic plan cannot know a batch's size, and one joined the other way
# round rescanned the whole batch once per running chunk.
# A row another transaction changes meanwhile (a cancel, a rescue) has another ctid by the
# time the write re-checks it, so it is skipped: the lease was lost.
FENCED = """SELECT i.*, c.tid FROM input i CROSS JOIN LATERAL (
        SELECT ctid AS tid FROM chunks
        WHERE job_id = i.job_id AND seq = i.seq AND attempts = i.attempt
          AND status = 'running' AND worker_id = %(me)s LIMIT 1) c"""

# FENCED for a batch given by its keys alone (the arrays job_ids, seqs, attempts): the
# CTE ``mine`` of the rows this worker still holds, for a heartbeat, a release or a wait.
FENCED_KEYS = f"""WITH input AS (
    SELECT * FROM unnest(%(job_ids)b::uuid[], %(seqs)b::int[], %(attempts)b::int[])
             AS i(job_id, seq, attempt)
), mine AS ({FENCED})"""

# The job rows of a batch's counts (the CTE ``counts``: job_id, n), each found by primary
# key, with its ctid: the caller holds these rows (``held_jobs``), so the ctids stay.
COUNTED_JOBS = """SELECT k.job_id, k.n, j.tid FROM counts k CROSS JOIN LATERAL (
        SELECT ctid AS tid FROM jobs WHERE id = k.job_id LIMIT 1) j"""


def jsonb_text(value: Any) -> str:
    """``value`` as JSON text that jsonb accepts, or ValueError: no NaN or infinity, no NUL
    character (U+0000), which PostgreSQL text cannot hold."""
    text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    if "\\u0000" in text and _NUL.search(text):
        raise ValueError("a NUL character (U+0000) cannot be stored")
    return text


# json.dumps writes NUL as \u0000; an even run of backslashes before it is escaped text.
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def key_columns(
    chunks: Iterable[ClaimedChunk],
) -> tuple[list[uuid.UUID], list[int], list[int]]:
    """The (job_id, seq, attempt) of ``chunks`` as three arrays, for a fenced ``unnest``."""
    job_ids: list[uuid.UUID] = []
    seqs: list[int] = []
    attempts: list[int] = []
    for chunk in chunks:
        job_ids.append(chunk.job_id)
        seqs.append(chunk.seq)
        attempts.append(chunk.attempt)
    return job_ids, seqs, attempts
