"""The Python state enums and the database CHECK constraints must agree."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from schema.states import (
    CHUNK_TRANSITIONS,
    JOB_TRANSITIONS,
    TERMINAL_JOB_STATUSES,
    ChunkStatus,
    JobStatus,
    ReduceStatus,
)


def _insert_job(db: psycopg.Connection[Any], status: str) -> uuid.UUID:
    job_id = uuid.uuid4()
    db.execute(
        "INSERT INTO jobs (id, status, chunks_total, max_chunk_chars, text_chars)"
        " VALUES (%s, %s, 1, 10, 1)",
        (job_id, status),
    )
    return job_id


def test_job_check__accepts_every_enum_member(db: psycopg.Connection[Any]) -> None:
    for status in JobStatus:
        _insert_job(db, status.value)


def test_job_check__rejects_anything_else(db: psycopg.Connection[Any]) -> None:
    for bogus in ("DONE", "pending", ""):
        with pytest.raises(psycopg.errors.CheckViolation):
            _insert_job(db, bogus)


def test_chunk_check__accepts_every_enum_member_and_nothing_else(
    db: psycopg.Connection[Any],
) -> None:
    job_id = _insert_job(db, "PENDING")
    for seq, status in enumerate(ChunkStatus):
        db.execute(
            "INSERT INTO chunks (job_id, seq, start_offset, end_offset, text, status)"
            " VALUES (%s, %s, 0, 1, 'x', %s)",
            (job_id, seq, status.value),
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            "INSERT INTO chunks (job_id, seq, start_offset, end_offset, text, status)"
            " VALUES (%s, 99, 0, 1, 'x', 'RUNNING')",
            (job_id,),
        )


def test_check_constraints__list_exactly_the_enum_values(db: psycopg.Connection[Any]) -> None:
    rows = dict(
        db.execute(
            """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
               WHERE conname IN ('jobs_status_check', 'chunks_status_check',
                                 'reductions_status_check')"""
        ).fetchall()
    )
    checks = (
        ("jobs_status_check", JobStatus),
        ("chunks_status_check", ChunkStatus),
        ("reductions_status_check", ReduceStatus),
    )
    for name, enum_cls in checks:
        definition = rows[name]
        quoted = {part.split("'")[1] for part in definition.split("'::text")[:-1]}
        assert quoted == {m.value for m in enum_cls}, definition


def test_transitions__terminal_states_have_no_exit() -> None:
    assert {s for s, nxt in JOB_TRANSITIONS.items() if not nxt} == TERMINAL_JOB_STATUSES
    assert set(JOB_TRANSITIONS) == set(JobStatus)
    assert set(CHUNK_TRANSITIONS) == set(ChunkStatus)
    for status in TERMINAL_JOB_STATUSES:
        assert status.terminal
    assert not JobStatus.PROCESSING.terminal
