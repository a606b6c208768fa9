"""The result cache: an identical chunk (same text, same provider identity) is answered from
the cache instead of a provider call, within its tenant unless the operator shares the cache;
the report says which results came from it; prune forgets old entries. Real PostgreSQL, real
worker steps (no threads)."""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from schema import cache, queue, reads, tenants
from schema.cache import Lookup
from schema.chunking import split_text
from tests.support import CACHED, FAST, assert_invariants, chunk_rows, job_row, run_until_idle
from workerd.cache import ResultCache
from workerd.providers import SimulatedProvider

TEXT = " ".join(f"Sentence number {n} says something of its own." for n in range(40))


class Counting(SimulatedProvider):
    """The simulated provider, counting its calls (from any thread)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.calls = 0
        self._count = threading.Lock()

    def analyze(self, text: str, call: Any = None) -> dict[str, Any]:
        with self._count:
            self.calls += 1
        return super().analyze(text, call)


class Renamed(Counting):
    """Another provider identity: its answers must not be taken for the simulated one's."""

    cache_identity = "renamed/1"


class Anonymous(Counting):
    """A provider that does not say what its answers depend on: never cached."""

    cache_identity = None  # type: ignore[assignment]


def submit(db: psycopg.Connection[Any], owner: str | None = None, text: str = TEXT) -> uuid.UUID:
    job_id = uuid.uuid4()
    with db.transaction():
        queue.enqueue(db, job_id, text, split_text(text, 60), max_chunk_chars=60, owner=owner)
    return job_id


def cached_flags(db: psycopg.Connection[Any], job_id: uuid.UUID) -> set[bool]:
    return {
        bool(row[0]) for row in db.execute("SELECT cached FROM chunks WHERE job_id = %s", (job_id,))
    }


def test_cache__a_resubmitted_document_costs_no_provider_call(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    first = submit(db)
    chunks = job_row(db, first)["chunks_total"]
    provider = Counting()
    run_until_idle(database_url, provider, settings=CACHED)
    assert provider.calls == chunks and cached_flags(db, first) == {False}

    again = submit(db)
    provider = Counting()
    run_until_idle(database_url, provider, settings=CACHED)
    assert provider.calls == 0
    row = job_row(db, again)
    assert row["status"] == "COMPLETED" and row["chunks_completed"] == chunks
    entries = row["analysis_result"]["chunks"]
    assert all(e["cached"] is True for e in entries)
    # The same results as the first time, chunk for chunk, and the same summary.
    before = job_row(db, first)["analysis_result"]
    assert [e["result"] for e in entries] == [e["result"] for e in before["chunks"]]
    assert row["analysis_result"]["summary"] == before["summary"]
    assert {(r["attempts"], r["status"]) for r in chunk_rows(db, again)} == {(1, "succeeded")}
    assert_invariants(db)


def test_cache__a_tenant_never_receives_another_tenant_s_results(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    a = tenants.create_key(db, "a").id
    b = tenants.create_key(db, "b").id
    mine = submit(db, owner=a)
    run_until_idle(database_url, Counting(), settings=CACHED)
    theirs = submit(db, owner=b)
    provider = Counting()
    run_until_idle(database_url, provider, settings=CACHED)
    assert provider.calls == job_row(db, theirs)["chunks_total"]
    assert cached_flags(db, theirs) == {False}
    # Each tenant's results are kept in its own scope.
    scopes = {row[0] for row in db.execute("SELECT DISTINCT scope FROM result_cache")}
    assert scopes == {a, b}
    # Tenant a's own resubmission is answered from a's entries.
    again = submit(db, owner=a)
    provider = Counting()
    run_until_idle(database_url, provider, settings=CACHED)
    assert provider.calls == 0 and cached_flags(db, again) == {True}
    assert job_row(db, mine)["status"] == "COMPLETED"


def test_cache__shared_by_the_operator_answers_across_tenants(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    shared = replace(CACHED, result_cache="shared")
    a = tenants.create_key(db, "a").id
    b = tenants.create_key(db, "b").id
    submit(db, owner=a)
    run_until_idle(database_url, Counting(), settings=shared)
    theirs = submit(db, owner=b)
    provider = Counting()
    run_until_idle(database_url, provider, settings=shared)
    assert provider.calls == 0 and cached_flags(db, theirs) == {True}
    assert {row[0] for row in db.execute("SELECT DISTINCT scope FROM result_cache")} == {"*"}


def test_cache__another_provider_identity_is_not_answered(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    submit(db)
    run_until_idle(database_url, Counting(), settings=CACHED)
    again = submit(db)
    provider = Renamed()
    run_until_idle(database_url, provider, settings=CACHED)
    assert provider.calls == job_row(db, again)["chunks_total"]
    assert cached_flags(db, again) == {False}


@pytest.mark.parametrize(
    ("settings", "provider"),
    [(FAST, Counting), (CACHED, Anonymous)],
    ids=["cache off", "provider without an identity"],
)
def test_cache__off_or_without_identity_nothing_is_stored_or_answered(
    database_url: str, db: psycopg.Connection[Any], settings: Any, provider: type[Counting]
) -> None:
    submit(db)
    run_until_idle(database_url, provider(), settings=settings)
    again = submit(db)
    counting = provider()
    run_until_idle(database_url, counting, settings=settings)
    assert counting.calls == job_row(db, again)["chunks_total"]
    assert db.execute("SELECT count(*) FROM result_cache").fetchone() == (0,)


def test_cache__failures_are_not_cached(database_url: str, db: psycopg.Connection[Any]) -> None:
    job_id = submit(db)
    run_until_idle(database_url, Counting(fail_pattern="number 7 "), settings=CACHED)
    row = job_row(db, job_id)
    assert row["status"] == "PARTIAL_SUCCESS"
    stored = db.execute("SELECT count(*) FROM result_cache").fetchone()
    assert stored == (row["chunks_completed"],)
    # Resubmitted: the chunk that failed is tried again, the others come from the cache.
    again = submit(db)
    provider = Counting()
    run_until_idle(database_url, provider, settings=CACHED)
    assert provider.calls == row["chunks_failed"]
    assert job_row(db, again)["status"] == "COMPLETED"


def test_cache__cached_results_cost_no_tokens_in_usage(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    class Metered(Counting):
        def analyze(self, text: str, call: Any = None) -> dict[str, Any]:
            return {
                **super().analyze(text, call),
                "usage": {"prompt_tokens": 10, "completion_tokens": 5},
            }

    first = submit(db)
    run_until_idle(database_url, Metered(), settings=CACHED)
    chunks = job_row(db, first)["chunks_total"]
    usage = reads.job_report(db, first)["usage"]  # type: ignore[index]
    assert usage == {"prompt_tokens": 10 * chunks, "completion_tokens": 5 * chunks}
    again = submit(db)
    run_until_idle(database_url, Metered(), settings=CACHED)
    assert reads.job_report(db, again)["usage"] is None  # type: ignore[index]


def test_cache__prune_forgets_entries_older_than_the_age_given(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    submit(db)
    run_until_idle(database_url, Counting(), settings=CACHED)
    stored = db.execute("SELECT count(*) FROM result_cache").fetchone()
    assert stored is not None and stored[0] > 0
    now = datetime.now(UTC)
    assert cache.prune(db, 3600, now=now) == 0
    assert cache.prune(db, 3600, now=now + timedelta(hours=2), batch=3) == stored[0]
    assert db.execute("SELECT count(*) FROM result_cache").fetchone() == (0,)


def test_cache__the_claim_keys_each_chunk_by_identity_and_text(
    db: psycopg.Connection[Any],
) -> None:
    a = tenants.create_key(db, "a").id
    job_id = submit(db, owner=a, text="Ünïcödé text, café ☕. " * 6)
    lookup = Lookup.of("simulated/1")
    with db.transaction(force_rollback=True):
        claimed = queue.claim(db, "W", 100, lease_s=30, cache=lookup)
    assert claimed and all(c.job_id == job_id for c in claimed)
    # The key the claim makes in SQL is the one Python makes of the same text.
    assert [c.cache_key for c in claimed] == [lookup.key(c.text) for c in claimed]
    assert {c.cache_scope for c in claimed} == {a}
    other = Lookup.of("other/1")
    with db.transaction(force_rollback=True):
        keyed = queue.claim(db, "W", 1, lease_s=30, cache=other)
    assert keyed[0].cache_key == other.key(keyed[0].text) != lookup.key(keyed[0].text)
    with db.transaction(force_rollback=True):
        [shared] = queue.claim(db, "W", 1, lease_s=30, cache=Lookup.of("x", shared=True))
    assert shared.cache_scope == cache.SHARED
    with db.transaction(force_rollback=True):
        [off] = queue.claim(db, "W", 1, lease_s=30)
    assert (off.cache_scope, off.cache_key, off.cached) == (None, None, None)


def test_cache__modes() -> None:
    assert ResultCache("on", "simulated/1").lookup == Lookup.of("simulated/1")
    assert ResultCache("shared", "x").lookup == Lookup.of("x", shared=True)
    assert not ResultCache("on", None).enabled and not ResultCache("off", "x").enabled
    with pytest.raises(ValueError, match="CHUNKQ_RESULT_CACHE"):
        ResultCache("sometimes", "x")
