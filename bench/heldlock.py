"""The chaos soak's held-lock phase: an outside session (plain psycopg, none of chunkq's
timeouts) holds one job row FOR UPDATE, as an operator's forgotten transaction would, and
the other jobs' throughput is compared with a window just before it.

Throughput is read afterwards from ``chaos.chunk_log`` (every transition to succeeded, with
its ``clock_timestamp()``), so both windows are counted by the database's own clock.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

SAMPLE_S = 0.5

# The job to hold: of the jobs owning the next NEAR due chunks in claim order (so the fleet
# reaches its chunks within the window), the one with the most pending chunks, PROCESSING
# unless ``any_status`` (then it may be a PENDING job not started yet); else any open job
# with chunks to do.
NEAR = 2000
_PICK_JOB = """
WITH head AS (
    SELECT job_id FROM chunks WHERE status = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at, job_id, seq LIMIT %(near)s
)
SELECT c.job_id FROM chunks c JOIN jobs j ON j.id = c.job_id
WHERE c.status IN ('pending', 'running') AND j.status IN ('PENDING', 'PROCESSING')
GROUP BY c.job_id, j.status
ORDER BY c.job_id IN (SELECT job_id FROM head) AND j.status = ANY(%(statuses)s) DESC,
         count(*) FILTER (WHERE c.status = 'pending') DESC, c.job_id
LIMIT 1
"""
# Due pending chunks of the other jobs (work the fleet could be doing), and the locked
# job's chunks running or pending (the slots it holds, the work it still has).
_SAMPLE = """
SELECT count(*) FILTER (WHERE job_id IS DISTINCT FROM %(job)s AND status = 'pending'
                          AND next_attempt_at <= now()),
       count(*) FILTER (WHERE job_id = %(job)s AND status = 'running'),
       count(*) FILTER (WHERE job_id = %(job)s AND status = 'pending')
FROM chunks WHERE status IN ('pending', 'running')
"""
_SUCCEEDED = """
SELECT count(*), count(*) FILTER (WHERE job_id <> %(job)s) FROM chaos.chunk_log
WHERE new_status = 'succeeded' AND old_status <> 'succeeded' AND at >= %(a)s AND at < %(b)s
"""


@dataclass
class Window:
    """One measured window: its bounds on the database's clock and what was seen in it."""

    start: datetime
    end: datetime
    min_backlog: int = 0  # fewest due pending chunks of the other jobs at any sample
    succeeded_all: int = 0
    succeeded_others: int = 0

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass
class HeldLock:
    """What the phase did and measured; ``ratio`` is None when it could not be measured."""

    job_id: uuid.UUID | None = None
    reference: Window | None = None
    held: Window | None = None
    pending_at_lock: int = 0
    most_slots_held: int = 0  # most of the locked job's chunks running at once (deferred)
    terminal_after_s: float | None = None  # the locked job's terminal transition after it
    recorded_after_s: float | None = None  # its first chunk success after the release

    @property
    def ratio(self) -> float | None:
        """Other jobs' chunks/s under the lock over the fleet's chunks/s just before it."""
        if self.reference is None or self.held is None or not self.reference.succeeded_all:
            return None
        normal = self.reference.succeeded_all / self.reference.seconds
        return (self.held.succeeded_others / self.held.seconds) / normal

    def rates(self) -> tuple[float, float, float]:
        """Chunks/s: all jobs and the other jobs before the lock, the other jobs under it."""
        ref, held = self.reference, self.held
        if ref is None or held is None:
            return (0.0, 0.0, 0.0)
        return (
            ref.succeeded_all / ref.seconds,
            ref.succeeded_others / ref.seconds,
            held.succeeded_others / held.seconds,
        )

    def describe(self) -> str:
        """One line of what was measured, for the log and for a violation."""
        before, before_others, under = self.rates()
        ratio = "n/a" if self.ratio is None else f"{self.ratio:.2f}"
        backlog = [w.min_backlog for w in (self.reference, self.held) if w is not None]
        return (
            f"job {self.job_id} ({self.pending_at_lock} chunks open at the lock, at most "
            f"{self.most_slots_held} of them holding worker slots): other jobs {under:.1f} "
            f"chunks/s under the lock vs {before:.1f}/s for all jobs before it "
            f"({before_others:.1f}/s without this one), ratio {ratio}; fewest due chunks of "
            f"other jobs before/under: {'/'.join(map(str, backlog))}"
        )


def clock(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]


def observe(
    conn: psycopg.Connection[Any],
    seconds: float,
    tend: Callable[[], None],
    job: uuid.UUID | None = None,
    on_sample: Callable[[int, int, int], None] | None = None,
) -> Window:
    """Sample for ``seconds`` (calling ``tend`` between samples, which looks after the
    workers); returns the window with the fewest due pending chunks of jobs other than
    ``job`` seen at any sample."""
    window = Window(clock(conn), clock(conn), min_backlog=-1)
    until = time.monotonic() + seconds
    while True:
        backlog, running, pending = conn.execute(_SAMPLE, {"job": job}).fetchone() or (0, 0, 0)
        if window.min_backlog < 0 or backlog < window.min_backlog:
            window.min_backlog = backlog
        if on_sample is not None:
            on_sample(backlog, running, pending)
        if time.monotonic() >= until:
            break
        tend()
        time.sleep(min(SAMPLE_S, max(0.0, until - time.monotonic())))
    window.end = clock(conn)
    return window


def count(conn: psycopg.Connection[Any], window: Window, job: uuid.UUID) -> None:
    row = conn.execute(_SUCCEEDED, {"job": job, "a": window.start, "b": window.end}).fetchone()
    assert row is not None
    window.succeeded_all, window.succeeded_others = row


def hold_one_job(
    url: str, seconds: float, tend: Callable[[], None], *, any_status: bool = False
) -> HeldLock:
    """A reference window of ``seconds``, then one job row held FOR UPDATE for ``seconds``
    from a session of our own, then committed. Returns what was measured."""
    figures = HeldLock()
    statuses = ["PENDING", "PROCESSING"] if any_status else ["PROCESSING"]
    with psycopg.connect(url, autocommit=True) as monitor:
        reference = observe(monitor, seconds, tend)
        row = monitor.execute(_PICK_JOB, {"near": NEAR, "statuses": statuses}).fetchone()
        if row is None:
            return figures
        figures.job_id = job = row[0]
        with psycopg.connect(url) as holder:  # not chunkq's: no lock or idle timeouts
            holder.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job,))

            def seen(_backlog: int, running: int, pending: int) -> None:
                figures.most_slots_held = max(figures.most_slots_held, running)
                if not figures.pending_at_lock:
                    figures.pending_at_lock = pending + running

            held = observe(monitor, seconds, tend, job, seen)  # ends before the release
            holder.commit()
        for window in (reference, held):
            count(monitor, window, job)
        figures.reference, figures.held = reference, held
    return figures
