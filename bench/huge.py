"""Huge submissions: a ~30 MB body split into ~100,000 chunks, and the reports of such a job.

Two texts, each about 30 MB of UTF-8 JSON: prose (``workload.prose``), and the same prose
with one to three combining marks on every character (grapheme clusters everywhere, the
splitter's worst case), at the max_chunk_chars that gives just under 100,000 chunks.

- ``split``: ``schema.chunking.split_text`` alone, in this process, against ``json.loads``
  of the same body (the least any server must do with it).
- ``POST``: POST /v1/analyze over HTTP to gunicorn (JSON decode, validation, splitting, the
  one transaction with COPY), against ``json.loads`` of the body and against plain psycopg
  inserting the job row and COPYing the same chunk rows, interleaved request by request.
- ``cancel``: POST /v1/analyze/<id>/cancel of a prose job with half its chunks succeeded:
  time and response size, against a plain UPDATE cancelling the chunks of an identical job.
- ``GET``: the cancelled job's report, with its 100,000 chunk entries and with
  ``?chunks=false``. Each chunk's result is stored once, in its row, and the report builds
  ``analysis_result.chunks`` from the rows when it is read; the reference is psycopg
  reading the same rows raw (index, offsets, status, result as text, error, in order:
  what any report of them must read), without building JSON.

``python -m bench.huge`` runs this benchmark alone (``--quick``: a fifth of the size).
"""

from __future__ import annotations

import json
import random
import sys
import time
import uuid
from typing import Any

import httpx
import psycopg

from bench import procs, workload
from bench.figures import Figure, median
from bench.harness import BenchError, Context
from schema import queue
from schema.chunking import split_text

NAME = "huge"
MAX_CHUNKS = 100_000  # the API's default CHUNKQ_MAX_CHUNKS_PER_JOB
BODY_BYTES = 30_000_000


def marked(text: str, seed: int = 5) -> str:
    """``text`` with one to three combining marks (U+0300..U+036F) after every character."""
    rng = random.Random(seed)
    marks = [chr(code) for code in range(0x300, 0x370)]
    return "".join(ch + "".join(rng.choices(marks, k=rng.randint(1, 3))) for ch in text)


def texts(body_bytes: int) -> list[tuple[str, str]]:
    """(label, text) pairs whose JSON bodies are about ``body_bytes`` of UTF-8."""
    prose = workload.prose(body_bytes, seed=11)
    # A prose character with its marks averages about 5 bytes of UTF-8.
    return [("prose", prose), ("marks", marked(prose[: body_bytes // 5]))]


def fitting_limit(text: str, chunks: int) -> tuple[int, list[tuple[int, int]]]:
    """The smallest max_chunk_chars (to 2%) that splits ``text`` into at most ``chunks``."""
    limit = -(-len(text) // chunks)
    while len(spans := split_text(text, limit)) > chunks:
        limit = int(limit * 1.02) + 1
    return limit, spans


def body_of(text: str, max_chunk_chars: int) -> bytes:
    payload = {"raw_text": text, "max_chunk_chars": max_chunk_chars}
    return json.dumps(payload, ensure_ascii=False).encode()


def _timed(fn: Any, *args: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - t0, value


def _post(http: httpx.Client, body: bytes) -> dict[str, Any]:
    response = http.post("/v1/analyze", content=body, headers={"Content-Type": "application/json"})
    if response.status_code != 202:
        raise BenchError(f"POST answered {response.status_code}: {response.text[:300]}")
    return dict(response.json())


def _raw_insert(conn: psycopg.Connection[Any], text: str, spans: list[tuple[int, int]]) -> None:
    job_id = uuid.uuid4()
    with conn.cursor() as cur:
        cur.execute(
            """INSERT INTO jobs (id, status, chunks_total, max_chunk_chars, text_chars)
               VALUES (%s, 'PENDING', %s, 1, %s)""",
            (job_id, len(spans), len(text)),
        )
        with cur.copy("COPY chunks (job_id, seq, start_offset, end_offset, text) FROM STDIN") as cp:
            for seq, (start, end) in enumerate(spans):
                cp.write_row((job_id, seq, start, end, text[start:end]))
    conn.commit()


def _half_succeeded(conn: psycopg.Connection[Any], job_id: uuid.UUID, chunks: int) -> None:
    """Record a small result for every other chunk of the job; hand the rest back."""
    with conn.transaction():
        claimed = queue.claim(conn, "bench-huge", chunks, lease_s=3600)
        outcomes: list[queue.Success | queue.Failure] = [
            queue.Success(c, {"chars": c.end - c.start, "words": c.text.count(" ") + 1})
            if c.seq % 2 == 0
            else queue.Failure(c, "Bench", "handed back", retry_in=0.0, counted=False)
            for c in claimed
            if c.job_id == job_id
        ]
        queue.record(conn, "bench-huge", outcomes, queue.merge_with(lambda results: {}))


def run(ctx: Context) -> list[Figure]:
    scale = 5 if ctx.quick else 1
    max_chunks, body_bytes = MAX_CHUNKS // scale, BODY_BYTES // scale
    reps = 1 if ctx.quick else 3
    figures: list[Figure] = []
    with (
        ctx.database("huge") as url,
        psycopg.connect(url, autocommit=True) as admin,
        psycopg.connect(url) as raw,
        procs.gunicorn(url, ctx.tmp, CHUNKQ_MAX_CHUNKS_PER_JOB=str(max_chunks)) as (base, _),
        httpx.Client(base_url=base, timeout=600) as http,
    ):
        for label, text in texts(body_bytes):
            limit, spans = fitting_limit(text, max_chunks)
            body = body_of(text, limit)
            size = f"{len(body) / 1e6:.1f} MB, {len(text):,} chars, {len(spans):,} chunks"
            ctx.say(f"{label}: {size} at max_chunk_chars={limit}")
            decode = median([_timed(json.loads, body)[0] for _ in range(reps)])
            split = median([_timed(split_text, text, limit)[0] for _ in range(reps)])
            api: list[float] = []
            ref: list[float] = []
            for _ in range(reps):
                workload.reset(admin)
                elapsed, answer = _timed(_post, http, body)
                if answer["chunks_total"] != len(spans):
                    raise BenchError(f"POST made {answer['chunks_total']} chunks, not {len(spans)}")
                api.append(elapsed)
                workload.reset(admin)
                ref.append(_timed(_raw_insert, raw, text, spans)[0])
            workload.reset(admin)
            ctx.say(
                f"{label}: json.loads {decode:.2f} s, split {split:.2f} s, POST {median(api):.2f} s"
                f" (runs {', '.join(f'{t:.2f}' for t in api)}), raw COPY {median(ref):.2f} s"
            )
            figures += [
                Figure(NAME, f"split {label}", split, "s", "json.loads", decode, note=size),
                Figure(
                    NAME,
                    f"POST {label}",
                    median(api),
                    "s",
                    "json.loads",
                    decode,
                    value_max=2 if not ctx.quick else None,
                ),
                Figure(NAME, f"POST {label} vs COPY", median(api), "s", "raw COPY", median(ref)),
            ]
        figures += _reports(ctx, http, raw, admin, texts(body_bytes)[0][1], max_chunks)
    return figures


def _reports(
    ctx: Context,
    http: httpx.Client,
    raw: psycopg.Connection[Any],
    admin: psycopg.Connection[Any],
    text: str,
    max_chunks: int,
) -> list[Figure]:
    """Cancel a job of ``max_chunks`` chunks, half of them succeeded, then GET its report."""
    limit, spans = fitting_limit(text, max_chunks)
    workload.reset(admin)
    job_id = uuid.UUID(_post(http, body_of(text, limit))["job_id"])
    _half_succeeded(raw, job_id, len(spans))
    twin = uuid.uuid4()
    with raw.transaction():
        queue.enqueue(raw, twin, text, spans, max_chunk_chars=limit)
    admin.execute("VACUUM ANALYZE chunks")

    cancel_s, response = _timed(http.post, f"/v1/analyze/{job_id}/cancel")
    if response.status_code != 200:
        raise BenchError(f"cancel answered {response.status_code}: {response.text[:300]}")
    cancel_kb = len(response.content) / 1e3
    t0 = time.perf_counter()
    with raw.transaction():
        raw.execute(
            "UPDATE chunks SET status = 'cancelled', finished_at = now()"
            " WHERE job_id = %s AND status IN ('pending', 'running')",
            (twin,),
        )
    update_s = time.perf_counter() - t0

    full = [_timed(http.get, f"/v1/analyze/{job_id}") for _ in range(3)]
    light = [_timed(http.get, f"/v1/analyze/{job_id}?chunks=false") for _ in range(3)]
    for _, got in full + light:
        if got.status_code != 200:
            raise BenchError(f"GET answered {got.status_code}: {got.text[:300]}")
    entries = len(full[0][1].json()["analysis_result"]["chunks"])
    if entries != len(spans):
        raise BenchError(f"GET listed {entries} chunks, not {len(spans)}")
    rows_s = []
    for _ in range(3):
        t0 = time.perf_counter()
        with raw.transaction():
            rows = raw.execute(
                """SELECT seq, start_offset, end_offset, status, result::text, error
                   FROM chunks WHERE job_id = %s ORDER BY seq""",
                (job_id,),
            ).fetchall()
        rows_s.append(time.perf_counter() - t0)
    if len(rows) != len(spans):
        raise BenchError(f"read {len(rows)} chunk rows, not {len(spans)}")
    rows_mb = sum(len(r[4] or "") + len(r[5] or "") for r in rows) / 1e6
    full_s, full_mb = median([t for t, _ in full]), len(full[0][1].content) / 1e6
    light_s, light_mb = median([t for t, _ in light]), len(light[0][1].content) / 1e6
    ctx.say(
        f"cancel of {len(spans):,} chunks: {cancel_s:.2f} s, {cancel_kb:.1f} KB"
        f" (plain UPDATE {update_s:.2f} s); GET {full_s:.2f} s, {full_mb:.1f} MB;"
        f" ?chunks=false {light_s * 1000:.0f} ms, {light_mb * 1000:.1f} KB;"
        f" its {len(rows):,} chunk rows read raw in {median(rows_s):.2f} s"
        f" ({rows_mb:.1f} MB of results and errors)"
    )
    workload.reset(admin)
    return [
        Figure(
            NAME,
            f"cancel {len(spans)} chunks",
            cancel_s,
            "s",
            "plain UPDATE",
            update_s,
            ratio_max=2,
        ),
        Figure(NAME, "cancel response", cancel_kb, "KB", "full GET", full_mb * 1000, value_max=100),
        Figure(
            NAME,
            "GET with chunks",
            full_s,
            "s",
            "read its chunk rows raw",
            median(rows_s),
            note=f"{full_mb:.1f} MB; the reference: psycopg fetching the job's {len(rows):,}"
            f" chunk rows (index, offsets, status, result as text, error) in order,"
            f" {rows_mb:.1f} MB of results and errors, no JSON built",
        ),
        Figure(
            NAME,
            "GET ?chunks=false",
            light_s,
            "s",
            "GET with chunks",
            full_s,
            note=f"{light_mb * 1000:.1f} KB",
        ),
    ]


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["--only", NAME, *sys.argv[1:]]))
