"""The circuit breaker: a provider outage pauses the queue instead of failing its chunks.

Each worker counts provider-unavailable failures in a row (refused or dropped connections,
5xx), across chunks; a success resets the count. At the threshold it opens the circuit for
every worker through the database (``schema.outages``). While it is open, workers claim only
one probe at a time, spaced by a doubling backoff up to a cap, and failures for want of the
provider hand their attempts back; a probe's success closes it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import psycopg

from schema import outages
from schema.queue import Failure, Success

log = logging.getLogger("workerd.circuit")

# How stale a closed circuit's state may be before the next claim reads it again.
REFRESH_S = 0.5
FIRST_PROBE_S = 1.0


class Circuit:
    """One worker's side of the shared circuit of provider endpoint ``key``."""

    def __init__(
        self,
        key: str,
        *,
        threshold: int,
        max_delay_s: float,
        monotonic: Callable[[], float],
        clock: Callable[[], datetime | None],
    ) -> None:
        self.key = key
        self.threshold = threshold
        self.max_delay_s = max_delay_s
        self._monotonic = monotonic
        self._clock = clock
        self.streak = 0  # provider-unavailable failures in a row, seen by this worker
        self.open = False  # as last read from the database
        self.probe_in_s = math.inf  # when open: seconds until the next probe may start
        self.probing = 0  # probe attempts of ours in flight
        self._read_at = -math.inf

    def observe(self, answered: bool) -> None:
        """Count one finished call: ``answered`` False for provider-unavailable failures."""
        self.streak = 0 if answered else self.streak + 1

    def claim_limit(self, conn: psycopg.Connection[Any], free: int) -> int:
        """How many units of work this worker may claim now (in the claim's transaction):
        ``free`` while the circuit is closed; while it is open, 1 when this worker wins the
        due probe, else 0."""
        now = self._monotonic()
        if not self.open and now - self._read_at < REFRESH_S:
            return free
        self._read(conn)
        if not self.open:
            return free
        if self.probing or free <= 0:
            return 0
        next_probe = outages.take_probe(
            conn, self.key, max_delay_s=self.max_delay_s, now=self._clock()
        )
        if next_probe is None:
            return 0
        self.probe_in_s = next_probe
        log.info("provider circuit open: probing with one call")
        return 1

    def settle(
        self,
        conn: psycopg.Connection[Any],
        outcomes: Sequence[Success | Failure],
        probes: Collection[Any] = (),
    ) -> list[Success | Failure]:
        """Apply the circuit to outcomes about to be recorded (in the record's transaction).

        Failures for want of the provider while the circuit is open are retried without
        counting the attempt (due at once: the circuit gates them); the failures that open it
        count as usual. A probe's success closes the circuit; a success of a call made before
        the outage began says nothing about now.
        """
        down = [o for o in outcomes if isinstance(o, Failure) and o.unavailable]
        if any(isinstance(o, Success) and o.chunk.key in probes for o in outcomes):
            self._close(conn)
        if not down:
            return list(outcomes)
        if not self.open:
            self._read(conn)
        if not self.open and self.streak < self.threshold:
            return list(outcomes)
        error = down[-1].error
        if not self.open:
            opened = outages.open_circuit(
                conn,
                self.key,
                error,
                failures=len(down),
                probe_in_s=FIRST_PROBE_S,
                now=self._clock(),
            )
            self.open, self.probe_in_s = True, FIRST_PROBE_S
            if opened:
                log.warning(
                    "provider unavailable (%d failures in a row; last: %s): circuit open,"
                    " claiming one probe at a time",
                    self.streak,
                    error,
                )
            return list(outcomes)
        outages.open_circuit(
            conn, self.key, error, failures=len(down), probe_in_s=FIRST_PROBE_S, now=self._clock()
        )
        return [
            replace(o, retry_in=0.0, counted=False)
            if isinstance(o, Failure) and o.unavailable
            else o
            for o in outcomes
        ]

    def settle_reduce(
        self, conn: psycopg.Connection[Any], unavailable: bool, *, probe: bool
    ) -> bool:
        """Whether a reduce outcome counts: False for a provider-unavailable failure while
        the circuit is open. A probe's success closes the circuit."""
        if not unavailable:
            if probe:
                self._close(conn)
            return True
        if not self.open:
            self._read(conn)
        return not self.open

    def _read(self, conn: psycopg.Connection[Any]) -> None:
        outage = outages.current(conn, self.key, now=self._clock())
        self._read_at = self._monotonic()
        self.open = outage is not None
        self.probe_in_s = outage.probe_in_s if outage is not None else math.inf

    def _close(self, conn: psycopg.Connection[Any]) -> None:
        seconds = outages.close_circuit(conn, self.key, now=self._clock())
        self.open, self.probe_in_s = False, math.inf
        if seconds is not None:
            log.warning("provider answering again after %.1fs: circuit closed", seconds)
