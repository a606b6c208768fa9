"""The merges below both services: each result merged by the provider that produced it, in
the worker's finalize and in the API's cancel alike."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from schema import merging, queue
from schema.queue import Success
from workerd.providers import BuiltinProvider, merge_by_name


def test_by_name__default_merges_unnamed_results_and_others_merge_their_own() -> None:
    merge = merging.by_name("simulated")
    assert merge(None) is merging.summarize_counts
    assert merge("simulated") is merging.summarize_counts
    assert merge("builtin") is merging.summarize_builtin
    assert merge("openai") is merging.summarize_analyses


def test_by_name__an_unknown_provider_raises_naming_it() -> None:
    with pytest.raises(ValueError, match=r"'nonesuch'.*builtin, openai, simulated"):
        merging.by_name("simulated")("nonesuch")


def test_merge_by_name__a_provider_object_merges_its_own_name_with_its_own_method() -> None:
    class Counting:
        name = "counting"

        def summarize(self, results: list[Any]) -> dict[str, Any]:
            return {"n": len(results)}

    provider = Counting()
    merge = merge_by_name(provider)  # type: ignore[arg-type]
    assert merge(None)([(1, {})]) == {"n": 1}
    assert merge("counting")([(1, {}), (2, {})]) == {"n": 2}
    assert merge("simulated") is merging.summarize_counts


def test_cancel__merges_each_result_by_the_provider_recorded_with_it(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    # The app runs with PROVIDER=simulated; the results it merges on cancel came from the
    # builtin analyzer, so the summary must be the builtin merge, not the simulated one.
    text = "A bright and happy morning. " * 4 + "A grey, sad evening. " * 4
    job_id = client.post("/v1/analyze", json={"raw_text": text, "max_chunk_chars": 60}).get_json()[
        "job_id"
    ]
    builtin = BuiltinProvider()
    with db.transaction():
        claimed = queue.claim(db, "W", 2, lease_s=30)
    outcomes = [Success(c, builtin.analyze(c.text)) for c in claimed]
    with db.transaction():
        queue.record(db, "W", outcomes, merge_by_name(builtin), provider="builtin")

    body = client.post(f"/v1/analyze/{job_id}/cancel").get_json()
    assert body["status"] == "CANCELLED"
    expected = builtin.summarize(
        [(c.end - c.start, o.result) for c, o in zip(claimed, outcomes, strict=True)]
    )
    assert body["analysis_result"]["summary"] == expected
    assert "keywords" in expected  # the builtin merge's, which the simulated one lacks
