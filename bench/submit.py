"""Submit latency: POST /v1/analyze over HTTP to gunicorn, against the raw cost of the rows.

gunicorn serves ``web:create_app()`` with 2 workers on a loopback port; httpx POSTs prose
of 10 KB, 100 KB, 1 MB and 10 MB at max_chunk_chars=1000 (200 requests each up to 1 MB, 20
at 10 MB; --quick fewer). Reference, interleaved request by request: plain psycopg
inserting a job row and COPYing the same chunk rows (spans from the same chunker, computed
beforehand) in one transaction, into the same tables. The tables are emptied between sizes.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import psycopg

from bench import procs, workload
from bench.figures import Figure, median, percentile
from bench.harness import BenchError, Context
from schema.chunking import split_text

NAME = "submit"
MAX_CHUNK_CHARS = 1000


def _raw_insert(conn: psycopg.Connection[Any], text_len: int, rows: list[tuple[Any, ...]]) -> float:
    """Seconds to insert one job row and COPY its chunk rows, committed."""
    job_id = uuid.uuid4()
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(
            """INSERT INTO jobs (id, status, chunks_total, max_chunk_chars, text_chars)
               VALUES (%s, 'PENDING', %s, %s, %s)""",
            (job_id, len(rows), MAX_CHUNK_CHARS, text_len),
        )
        with cur.copy(
            "COPY chunks (job_id, seq, start_offset, end_offset, text) FROM STDIN"
        ) as copy:
            for seq, start, end, chunk in rows:
                copy.write_row((job_id, seq, start, end, chunk))
    conn.commit()
    return time.perf_counter() - t0


def _post(http: httpx.Client, body: bytes, chunks: int) -> float:
    t0 = time.perf_counter()
    response = http.post("/v1/analyze", content=body, headers={"Content-Type": "application/json"})
    elapsed = time.perf_counter() - t0
    if response.status_code != 202 or response.json()["chunks_total"] != chunks:
        raise BenchError(f"POST answered {response.status_code}: {response.text[:300]}")
    return elapsed


def run(ctx: Context) -> list[Figure]:
    figures: list[Figure] = []
    with (
        ctx.database("submit") as url,
        psycopg.connect(url, autocommit=True) as admin,
        psycopg.connect(url) as raw,
        procs.gunicorn(url, ctx.tmp) as (base, _master),
        httpx.Client(base_url=base, timeout=300) as http,
    ):
        for label, chars, count in ctx.sizes.submit:
            text = workload.prose(chars, seed=chars)
            spans = split_text(text, MAX_CHUNK_CHARS)
            rows = [(seq, s, e, text[s:e]) for seq, (s, e) in enumerate(spans)]
            body = json.dumps({"raw_text": text, "max_chunk_chars": MAX_CHUNK_CHARS}).encode()
            workload.reset(admin)
            for _ in range(2):  # warm both paths (pools, prepared plans, caches)
                _post(http, body, len(spans))
                _raw_insert(raw, len(text), rows)
            api: list[float] = []
            ref: list[float] = []
            for _ in range(count):
                api.append(_post(http, body, len(spans)) * 1000)
                ref.append(_raw_insert(raw, len(text), rows) * 1000)
            workload.reset(admin)
            ctx.say(
                f"submit {label}: {len(spans)} chunks, n={count}, api median"
                f" {median(api):.1f} ms p99 {percentile(api, 99):.1f} ms; raw COPY median"
                f" {median(ref):.1f} ms p99 {percentile(ref, 99):.1f} ms"
            )
            sizes_note = f"{len(spans)} chunks, body {len(body) / 1e6:.2f} MB"
            figures.append(
                Figure(
                    NAME,
                    f"{label} median (n={count})",
                    median(api),
                    "ms",
                    "raw COPY",
                    median(ref),
                    ratio_max=2,
                    note=sizes_note,
                )
            )
            figures.append(
                Figure(
                    NAME,
                    f"{label} p99 (n={count})",
                    percentile(api, 99),
                    "ms",
                    "raw COPY",
                    percentile(ref, 99),
                    ratio_max=2,
                    value_max=100 if label == "1MB" else None,
                    extra={"max_ms": max(api), "raw_max_ms": max(ref)},
                )
            )
    return figures
