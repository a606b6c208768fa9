"""Every statement that moves ``jobs.status`` or ``chunks.status``: the queue's one home.

One module per transition: ``enqueue`` (a new job), ``claim`` (the lease: claim, heartbeat,
release, and what is due), ``record`` (an attempt's outcome), ``finalize`` (a job's terminal
status and merged result), ``rescue`` (expired leases), ``cancel``, and ``reductions`` (the
optional reduce step, a unit of work of its own). ``outcomes`` holds the values they
exchange, ``sql`` the shared SQL vocabulary.

Each function is one statement or one short transaction on a psycopg connection whose
transaction the caller owns. ``now`` is passed in so tests can move a fake clock; ``None``
means the database's clock, which every worker on every machine shares.

Lock order, to rule out deadlocks between workers: a transaction that changes a job's
counters locks the job rows first (sorted by id), then the chunk rows. The claim locks
pending chunks and then only touches jobs still PENDING, which no other path holds while
waiting on a pending chunk.
"""

from schema.queue.cancel import cancel
from schema.queue.claim import (
    _CLAIM,
    claim,
    claim_statement,
    drained,
    heartbeat,
    release,
    running_calls,
    seconds_until_due,
)
from schema.queue.enqueue import enqueue
from schema.queue.finalize import finalize, summary
from schema.queue.outcomes import (
    ClaimedChunk,
    Failure,
    Finalized,
    Merge,
    Recorded,
    Success,
    Summarize,
    merge_with,
)
from schema.queue.record import held_jobs, record
from schema.queue.rescue import WORKER_LOST, rescue
from schema.queue.sql import (
    ANONYMOUS_LANE,
    CANCEL_NOTICE,
    CAP_LOCK_KEY,
    FAIR_QUANTUM,
    NOTIFY_CHANNEL,
    NOW,
    RESCUE_LOCK_KEY,
    jsonb_text,
)
from schema.states import ChunkStatus, JobStatus

__all__ = [
    "ANONYMOUS_LANE",
    "CANCEL_NOTICE",
    "CAP_LOCK_KEY",
    "FAIR_QUANTUM",
    "NOTIFY_CHANNEL",
    "NOW",
    "RESCUE_LOCK_KEY",
    "WORKER_LOST",
    "_CLAIM",
    "ChunkStatus",
    "ClaimedChunk",
    "Failure",
    "Finalized",
    "JobStatus",
    "Merge",
    "Recorded",
    "Success",
    "Summarize",
    "cancel",
    "claim",
    "claim_statement",
    "drained",
    "enqueue",
    "finalize",
    "heartbeat",
    "held_jobs",
    "jsonb_text",
    "merge_with",
    "record",
    "release",
    "rescue",
    "running_calls",
    "seconds_until_due",
    "summary",
]
