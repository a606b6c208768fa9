"""Provider outages: the circuit breaker's state, shared by every worker through the database.

A row with no ``ended_at`` is an open circuit for one provider endpoint (a partial unique
index keeps it to one). While it is open, workers claim nothing but one probe at a time,
spaced by a backoff that doubles up to a cap; the first success closes it. Finished rows stay
as the record job reports read ("the provider was unavailable from … for … s").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from schema.clock import NOW


@dataclass(frozen=True, slots=True)
class Outage:
    """An open circuit: since when, and how long until the next probe may start."""

    id: int
    started_at: datetime
    probe_in_s: float


def current(
    conn: psycopg.Connection[Any], provider: str, *, now: datetime | None = None
) -> Outage | None:
    """The open outage of ``provider``, or None when its circuit is closed."""
    row = conn.execute(
        f"""SELECT id, started_at, greatest(0, extract(epoch FROM probe_at - {NOW}))::float8
            FROM provider_outages WHERE provider = %(p)s AND ended_at IS NULL""",
        {"p": provider, "now": now},
    ).fetchone()
    return None if row is None else Outage(*row)


def open_circuit(
    conn: psycopg.Connection[Any],
    provider: str,
    error: str,
    *,
    failures: int,
    probe_in_s: float,
    now: datetime | None = None,
) -> bool:
    """Open the circuit (or add ``failures`` to the open one); True if this call opened it.

    INSERT … ON CONFLICT on the partial unique index, so workers that see the outage at the
    same moment open one row between them.
    """
    row = conn.execute(
        f"""INSERT INTO provider_outages (provider, started_at, failures, last_error,
                                          probe_at, probe_delay_s)
            VALUES (%(p)s, {NOW}, %(n)s, %(error)s,
                    {NOW} + make_interval(secs => %(delay)s), %(delay)s)
            ON CONFLICT (provider) WHERE ended_at IS NULL DO UPDATE
            SET failures = provider_outages.failures + EXCLUDED.failures,
                last_error = EXCLUDED.last_error
            RETURNING xmax = 0""",
        {"p": provider, "n": failures, "error": error, "delay": probe_in_s, "now": now},
    ).fetchone()
    return bool(row and row[0])


def take_probe(
    conn: psycopg.Connection[Any],
    provider: str,
    *,
    max_delay_s: float,
    now: datetime | None = None,
) -> float | None:
    """Claim the right to one probe call if it is due; returns the seconds until the next
    probe, None when none was due. The next probe's time moves out by the doubled backoff
    at once, so a prober that dies does not hold the circuit shut."""
    row = conn.execute(
        f"""UPDATE provider_outages
            SET probes = probes + 1,
                probe_delay_s = least(probe_delay_s * 2, %(max)s),
                probe_at = {NOW} + make_interval(secs => least(probe_delay_s * 2, %(max)s))
            WHERE provider = %(p)s AND ended_at IS NULL AND probe_at <= {NOW}
            RETURNING probe_delay_s""",
        {"p": provider, "max": max_delay_s, "now": now},
    ).fetchone()
    return None if row is None else float(row[0])


def close_circuit(
    conn: psycopg.Connection[Any], provider: str, *, now: datetime | None = None
) -> float | None:
    """End the open outage after a success; its length in seconds, or None if none was open."""
    row = conn.execute(
        f"""UPDATE provider_outages SET ended_at = {NOW}
            WHERE provider = %(p)s AND ended_at IS NULL
            RETURNING extract(epoch FROM ended_at - started_at)::float8""",
        {"p": provider, "now": now},
    ).fetchone()
    return None if row is None else float(row[0])


def during(
    conn: psycopg.Connection[Any], since: datetime, until: datetime | None
) -> list[dict[str, Any]]:
    """Outages that overlap [since, until] (until None: still running), oldest first."""
    rows = conn.execute(
        """SELECT provider, started_at, ended_at,
                  extract(epoch FROM coalesce(ended_at, now()) - started_at)::float8,
                  failures, probes, last_error
           FROM provider_outages
           WHERE started_at <= coalesce(%(until)s, now())
             AND coalesce(ended_at, now()) >= %(since)s
           ORDER BY started_at""",
        {"since": since, "until": until},
    ).fetchall()
    return [
        {
            "provider": provider,
            "started_at": started.isoformat(),
            "ended_at": ended.isoformat() if ended else None,
            "seconds": round(seconds, 3),
            "failed_calls": failures,
            "probes": probes,
            "last_error": error,
        }
        for provider, started, ended, seconds, failures, probes, error in rows
    ]
