"""API keys and tenants, Idempotency-Key, per-key limits and listing, through a real gunicorn
(CHUNKQ_AUTH=on) on a real PostgreSQL, with real workers where a job must finish."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from schema import tenants
from tests.processes import gunicorn, start_worker, stop, wait_for

pytestmark = pytest.mark.slow

TEXT = "One sentence here. Another one there. " * 20


@pytest.fixture
def api(database_url: str) -> Iterator[str]:
    with gunicorn(database_url, CHUNKQ_AUTH="on", CHUNKQ_PROVIDER="simulated") as base:
        yield base


@pytest.fixture
def admin(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def client(base: str, key: str | None = None, **headers: str) -> httpx.Client:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.Client(base_url=base, headers=headers, timeout=30)


def jobs_in_db(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None
    return int(row[0])


# -- 401 --------------------------------------------------------------------------------


def test_a_request_without_a_live_key_is_401_with_a_bearer_challenge(
    api: str, admin: psycopg.Connection[Any]
) -> None:
    made = tenants.create_key(admin, "alice")
    forged = made.key[:-4] + ("AAAA" if not made.key.endswith("AAAA") else "BBBB")
    cases = {
        "no key": None,
        "unknown key": f"cq_{'0' * 16}_{'x' * 43}",
        "forged secret": forged,
        "not a key": "hello",
    }
    for case, key in cases.items():
        with client(api, key) as http:
            for answer in (
                http.post("/v1/analyze", json={"raw_text": TEXT}),
                http.get(f"/v1/analyze/{uuid.uuid4()}"),
                http.get("/v1/analyze"),
            ):
                assert answer.status_code == 401, (case, answer.text)
                assert answer.headers["content-type"] == "application/problem+json"
                assert answer.headers["WWW-Authenticate"].startswith("Bearer"), case
    with client(api, Authorization="Basic dXNlcjpwYXNz") as http:
        assert http.get("/v1/analyze").status_code == 401
    assert jobs_in_db(admin) == 0
    # The checks need no key.
    with client(api) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200


def test_a_revoked_key_is_refused_at_once(api: str, admin: psycopg.Connection[Any]) -> None:
    made = tenants.create_key(admin, "alice")
    with client(api, made.key) as http:
        posted = http.post("/v1/analyze", json={"raw_text": TEXT})
        assert posted.status_code == 202, posted.text
        tenants.revoke(admin, made.id)
        # The next request, on a connection that has already authenticated.
        refused = http.get(posted.headers["Location"])
        assert refused.status_code == 401
        assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
        assert http.post("/v1/analyze", json={"raw_text": TEXT}).status_code == 401
    assert jobs_in_db(admin) == 1


# -- tenants -------------------------------------------------------------------------------


def test_a_job_belongs_to_its_key_and_is_404_to_every_other(
    api: str, admin: psycopg.Connection[Any]
) -> None:
    alice, bob = tenants.create_key(admin, "alice"), tenants.create_key(admin, "bob")
    with client(api, alice.key) as a, client(api, bob.key) as b:
        posted = a.post("/v1/analyze", json={"raw_text": TEXT, "max_chunk_chars": 100})
        assert posted.status_code == 202
        where = posted.headers["Location"]
        assert a.get(where).status_code == 200
        for answer in (
            b.get(where),
            b.get(f"{where}?chunks=false"),
            b.get(f"{where}/chunks"),
            b.get(f"{where}/chunks?text=true&from=0"),
            b.get(f"{where}/chunks/states"),
            b.post(f"{where}/cancel"),
        ):
            assert answer.status_code == 404, answer.text
            assert answer.headers["content-type"] == "application/problem+json"
        assert b.get("/v1/analyze").json() == {"data": [], "next_cursor": None}
        assert [j["job_id"] for j in a.get("/v1/analyze").json()["data"]] == [
            posted.json()["job_id"]
        ]
        # Bob's cancel changed nothing; Alice's own works.
        assert a.get(where).json()["status"] == "PENDING"
        assert a.post(f"{where}/cancel").json()["status"] == "CANCELLED"


# -- Idempotency-Key -------------------------------------------------------------------


def test_idempotency_key__a_retry_gets_the_same_202_and_writes_nothing(
    api: str, admin: psycopg.Connection[Any]
) -> None:
    key = tenants.create_key(admin, "alice").key
    body = {"raw_text": TEXT, "max_chunk_chars": 100, "metadata": {"order": "42"}}
    with client(api, key, **{"Idempotency-Key": "order-42"}) as http:
        first = http.post("/v1/analyze", json=body)
        assert first.status_code == 202, first.text
        # The same request, spelled differently: key order, and text for raw_text.
        again = http.post(
            "/v1/analyze",
            json={"metadata": {"order": "42"}, "max_chunk_chars": 100, "text": TEXT},
        )
        assert again.status_code == 202
        assert again.json() == first.json()
        assert again.headers["Location"] == first.headers["Location"]
        assert jobs_in_db(admin) == 1

        different = http.post("/v1/analyze", json={**body, "max_chunk_chars": 50})
        assert different.status_code == 422, different.text
        assert different.headers["content-type"] == "application/problem+json"
        assert "Idempotency-Key" in different.json()["detail"]
        assert jobs_in_db(admin) == 1
    # Another tenant's key of the same name is its own.
    other = tenants.create_key(admin, "bob").key
    with client(api, other, **{"Idempotency-Key": "order-42"}) as http:
        theirs = http.post("/v1/analyze", json=body)
        assert theirs.status_code == 202
        assert theirs.json()["job_id"] != first.json()["job_id"]
    assert jobs_in_db(admin) == 2


def test_idempotency_key__eight_concurrent_identical_requests_make_one_job(
    api: str, admin: psycopg.Connection[Any]
) -> None:
    key = tenants.create_key(admin, "alice").key
    body = {"raw_text": TEXT * 50, "max_chunk_chars": 50}
    start = threading.Barrier(8)
    answers: list[httpx.Response] = []

    def post() -> None:
        with client(api, key, **{"Idempotency-Key": "same"}) as http:
            start.wait(10)
            answers.append(http.post("/v1/analyze", json=body))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [a.status_code for a in answers] == [202] * 8, [a.text for a in answers]
    assert len({a.json()["job_id"] for a in answers}) == 1
    assert jobs_in_db(admin) == 1
    row = admin.execute("SELECT count(*) FROM chunks").fetchone()
    assert row is not None and row[0] == answers[0].json()["chunks_total"]


def test_idempotency_key__a_malformed_key_is_400_and_writes_nothing(
    api: str, admin: psycopg.Connection[Any]
) -> None:
    key = tenants.create_key(admin, "alice").key
    for bad in ("", "x" * 256, "caf\u00e9"):
        with client(api, key) as http:
            answer = http.post(
                "/v1/analyze",
                json={"raw_text": TEXT},
                headers={"Idempotency-Key": bad.encode()},
            )
        assert answer.status_code == 400, (bad, answer.text)
        assert answer.json()["errors"][0]["field"] == "Idempotency-Key"
    assert jobs_in_db(admin) == 0


# -- limits ------------------------------------------------------------------------------


def test_per_key_limits_answer_429_with_retry_after(
    api: str, admin: psycopg.Connection[Any]
) -> None:
    few_jobs = tenants.create_key(admin, "few jobs", max_jobs_in_flight=2)
    few_chunks = tenants.create_key(admin, "few chunks", max_queued_chunks=30)
    with client(api, few_jobs.key) as http:
        for _ in range(2):
            assert http.post("/v1/analyze", json={"raw_text": TEXT}).status_code == 202
        refused = http.post("/v1/analyze", json={"raw_text": TEXT})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        assert "2 jobs in flight" in refused.json()["detail"]
        # A finished job no longer counts.
        first = http.get("/v1/analyze").json()["data"][-1]["job_id"]
        assert http.post(f"/v1/analyze/{first}/cancel").status_code == 200
        assert http.post("/v1/analyze", json={"raw_text": TEXT}).status_code == 202
    with client(api, few_chunks.key) as http:
        ok = http.post("/v1/analyze", json={"raw_text": TEXT, "max_chunk_chars": 40})
        assert ok.status_code == 202 and ok.json()["chunks_total"] <= 30
        refused = http.post("/v1/analyze", json={"raw_text": TEXT, "max_chunk_chars": 40})
        assert refused.status_code == 429
        assert "queued chunks" in refused.json()["detail"]
    # Another key is not limited by these.
    with client(api, tenants.create_key(admin, "free").key) as http:
        assert http.post("/v1/analyze", json={"raw_text": TEXT}).status_code == 202
    assert jobs_in_db(admin) == 5


# -- listing -------------------------------------------------------------------------------


def test_list__250_jobs_paged_newest_first_while_more_are_added(
    api: str, admin: psycopg.Connection[Any]
) -> None:
    alice, bob = tenants.create_key(admin, "alice").key, tenants.create_key(admin, "bob").key
    made: list[str] = []
    with client(api, alice) as a, client(api, bob) as b:
        for n in range(250):
            body = {"raw_text": f"Job {n}. {TEXT}", "metadata": {"parity": str(n % 2)}}
            made.append(a.post("/v1/analyze", json=body).json()["job_id"])
            if n % 25 == 0:
                b.post("/v1/analyze", json={"raw_text": TEXT})
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
            page = a.get("/v1/analyze", params=params)
            assert page.status_code == 200, page.text
            seen += [job["job_id"] for job in page.json()["data"]]
            assert all("analysis_result" not in job for job in page.json()["data"])
            pages += 1
            # Jobs added while paging are newer than the cursor: never on a later page.
            a.post("/v1/analyze", json={"raw_text": TEXT})
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert pages == 3
        assert seen == made[::-1]

        odd = a.get("/v1/analyze", params={"metadata[parity]": "1", "limit": "100"}).json()
        assert [j["job_id"] for j in odd["data"]] == made[::-2][:100]
        assert {j["metadata"]["parity"] for j in odd["data"]} == {"1"}
        assert odd["next_cursor"] is not None

        a.post(f"/v1/analyze/{made[7]}/cancel")
        cancelled = a.get("/v1/analyze", params={"status": "CANCELLED"}).json()
        assert [j["job_id"] for j in cancelled["data"]] == [made[7]]
        both = a.get("/v1/analyze", params={"status": "CANCELLED,PENDING", "limit": "1"})
        assert both.json()["data"][0]["status"] == "PENDING"
        # Bob sees only his own 10.
        assert len(b.get("/v1/analyze", params={"limit": "100"}).json()["data"]) == 10


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "\u00b2"}, "limit"),  # a digit to str.isdigit, not to int()
        ({"limit": "\uff11\uff10"}, "limit"),  # fullwidth digits
        ({"status": "DONE"}, "status"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WyJjaHVua3MiLDNd"}, "cursor"),  # a chunk list's cursor
        ({"sort": "asc"}, "sort"),
        # jsonb cannot hold U+0000: the filter's query failed, a 500 (found by schemathesis).
        ({"metadata[team\x00]": "a"}, "metadata[team\x00]"),
        ({"metadata[team]": "a\x00"}, "metadata[team]"),
    ],
)
def test_list__a_bad_parameter_is_a_400_naming_it(
    api: str, admin: psycopg.Connection[Any], params: dict[str, str], field: str
) -> None:
    with client(api, tenants.create_key(admin, "alice").key) as http:
        answer = http.get("/v1/analyze", params=params)
    assert answer.status_code == 400, answer.text
    assert [e["field"] for e in answer.json()["errors"]] == [field]


# -- chunks, a page at a time or as NDJSON ---------------------------------------------------


def test_chunks__pages_and_ndjson_give_every_chunk_in_order(
    api: str, admin: psycopg.Connection[Any]
) -> None:
    with client(api, tenants.create_key(admin, "alice").key) as http:
        text = "".join(f"Sentence number {n}. " for n in range(600))
        posted = http.post("/v1/analyze", json={"raw_text": text, "max_chunk_chars": 30})
        total = posted.json()["chunks_total"]
        assert total > 250
        where = posted.headers["Location"]
        entries: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = http.get(f"{where}/chunks", params={"limit": "100", "cursor": cursor or ""})
            assert page.status_code == 200, page.text
            entries += page.json()["data"]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert [e["index"] for e in entries] == list(range(total))
        assert "".join(text[e["start"] : e["end"]] for e in entries) == text
        assert {e["status"] for e in entries} == {"pending"}

        with http.stream("GET", f"{where}/chunks", headers={"Accept": "application/x-ndjson"}) as s:
            assert s.headers["content-type"].startswith("application/x-ndjson")
            lines = [line for line in s.iter_lines() if line]
        assert [httpx.Response(200, content=line).json() for line in lines] == entries
        assert http.get(f"{where}/chunks", params={"cursor": "bm9wZQ"}).status_code == 400


# -- the reference API's shape, end to end ----------------------------------------------------


def test_reference_shape__text_alias_and_one_always_failing_chunk_end_partial_success(
    database_url: str, admin: psycopg.Connection[Any], tmp_path: Path
) -> None:
    paragraphs = [f"Paragraph {n} talks about ordinary things at length. " * 8 for n in range(6)]
    paragraphs[3] = "This paragraph is POISON and always fails. " * 10
    text = "\n\n".join(paragraphs)
    key = tenants.create_key(admin, "reference").key
    worker = start_worker(
        database_url,
        log=tmp_path / "worker.log",
        CHUNKQ_PROVIDER="simulated",
        CHUNKQ_SIM_FAIL_PATTERN="POISON",
        CHUNKQ_BACKOFF_BASE_S="0.05",
        CHUNKQ_BACKOFF_MAX_S="0.1",
    )
    try:
        with (
            gunicorn(database_url, CHUNKQ_AUTH="on", CHUNKQ_PROVIDER="simulated") as base,
            client(base, key) as http,
        ):
            posted = http.post("/v1/analyze", json={"text": text, "max_chunk_chars": 500})
            assert posted.status_code == 202, posted.text
            assert posted.json()["status"] == "PENDING"
            job = posted.json()["job_id"]

            def finished() -> bool:
                return http.get(f"/v1/analyze/{job}").json()["status"] != "PENDING" and (
                    http.get(f"/v1/analyze/{job}").json()["finished_at"] is not None
                )

            wait_for(finished, 60, "the job to finish")
            report = http.get(f"/v1/analyze/{job}").json()
    finally:
        stop(worker)
    assert report["status"] == "PARTIAL_SUCCESS"
    assert report["progress_pct"] == report["percent"] == 100.0
    assert (
        report["total_chunks"] == report["chunks_total"] == len(report["analysis_result"]["chunks"])
    )
    failed = [c for c in report["analysis_result"]["chunks"] if c["status"] == "failed"]
    assert [e["chunk_index"] for e in report["chunk_errors"]] == [c["index"] for c in failed]
    assert failed and all("POISON" in text[c["start"] : c["end"]] for c in failed)
    assert all(e["error"] for e in report["chunk_errors"])
    # Every attempt of a failed chunk is in errors; its last one is in chunk_errors.
    assert len(report["errors"]) == 3 * len(failed)
    assert report["usage"] is None  # the simulated provider reports no tokens
