"""The leases a worker holds: renewed while its attempts run, given up when lost (the job
cancelled, the chunk rescued), handed back on shutdown; and the rescue of the chunks whose
owner stopped renewing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from schema import queue
from schema.queue import reductions
from workerd import lifecycle
from workerd.attempts import fields, key_of, label
from workerd.database import Database, DatabaseDown
from workerd.inflight import InFlight
from workerd.metrics import Metrics
from workerd.recorder import Recorder
from workerd.settings import Settings
from workerd.step import Step

log = logging.getLogger("workerd")


class Leases:
    """One worker's side of the lease protocol, on the attempts it holds (``inflight``)."""

    def __init__(
        self,
        worker_id: str,
        settings: Settings,
        db: Database,
        inflight: InFlight,
        recorder: Recorder,
        merge: queue.Merge,
        *,
        reduces: bool,
        clock: Callable[[], datetime | None],
        replace_stuck: Callable[[], None],
        metrics: Metrics | None = None,
    ) -> None:
        self.worker_id = worker_id
        self._metrics = metrics if metrics is not None else Metrics()
        self._settings = settings
        self._db = db
        self._inflight = inflight
        self._recorder = recorder
        self._merge = merge
        self._reduces = reduces
        self._clock = clock
        # Starts a fresh attempt thread beside one whose call was abandoned.
        self._replace_stuck = replace_stuck

    def renew(self, step: Step) -> None:
        """Renew our leases; abort the attempts whose lease we no longer hold (their job was
        cancelled, or a rescuer took them back), freeing their slots now."""
        chunks, reducing = self._inflight.live()

        def beat(conn: psycopg.Connection[Any]) -> tuple[set[Any], set[Any]]:
            lease, now = self._settings.lease_s, self._clock()
            return (
                queue.heartbeat(conn, self.worker_id, chunks, lease_s=lease, now=now),
                reductions.heartbeat(conn, self.worker_id, reducing, lease_s=lease, now=now),
            )

        owned, owned_reductions = self._db.transaction(beat)
        pending = {key_of(o) for o in self._recorder.unrecorded}
        lost: list[Any] = [c.key for c in chunks if c.key not in owned]
        lost += [r.job_id for r in reducing if r.job_id not in owned_reductions]
        for key in lost:
            if key in pending:
                continue  # finished already; the fence refuses its write
            call = self._inflight.calls.get(key)
            if call is not None:
                call.abort("lease lost")
            self._replace_stuck()
            self._inflight.forget(key)
            step.aborted += 1
            log.warning(
                "lease of %s lost (cancelled or rescued); attempt aborted",
                label(key),
                extra=fields(key),
            )

    def rescue(self, step: Step) -> None:
        """Take back chunks of lost workers. A rescue that fails is logged and tried again at
        the next round; it never stops this step's claim."""
        s = self._settings
        try:
            requeued, failed, finalized = self._db.transaction(
                lambda conn: queue.rescue(
                    conn,
                    self._merge,
                    max_attempts=s.max_attempts,
                    backoff_base_s=s.backoff_base_s,
                    backoff_max_s=s.backoff_max_s,
                    now=self._clock(),
                    reduces=self._reduces,
                )
            )
        except DatabaseDown:
            raise
        except Exception:
            log.exception("rescue failed; trying again at the next round")
            return
        if requeued or failed:
            log.warning(
                "rescued %d chunks from lost workers (%d failed for good)",
                requeued + failed,
                failed,
            )
        step.rescued += requeued + failed
        self._metrics.rescues.inc(requeued + failed)
        step.finalized.update({k: v.status.value for k, v in finalized.items()})
        lifecycle.finalized(finalized)

    def hand_back(self) -> int:
        """Return everything still in flight to the queue without counting the attempt."""
        chunks = list(self._inflight.chunks.values())
        reducing = list(self._inflight.reductions.values())
        if not chunks and not reducing:
            return 0

        def release(conn: psycopg.Connection[Any]) -> int:
            now = self._clock()
            return queue.release(conn, self.worker_id, chunks, now=now) + reductions.release(
                conn, self.worker_id, reducing, now=now
            )

        released = self._db.transaction(release)
        for key in [c.key for c in chunks] + [r.job_id for r in reducing]:
            call = self._inflight.calls.get(key)
            if call is not None:
                call.abort("worker stopping")
            self._inflight.forget(key)
        return released
