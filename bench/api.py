"""The service surface: what an API key costs a request, an idempotent replay, a list page.

Two gunicorns (2 workers each) serve the same database, one with CHUNKQ_AUTH=on and one with
it off; requests go to them in turn, so both see the same load:

- ``GET /v1/analyze/<id>`` of a pending 10-chunk job, with a key, against the same GET
  without auth: the key's lookup (one indexed read and a SHA-256) per request.
- ``POST /v1/analyze`` of 10 KB with a key, against the same POST without auth.
- The same POST replayed with its ``Idempotency-Key`` (the stored 202, nothing written),
  against a POST with a new key each time (the key claimed, the job written).
- ``GET /v1/analyze?limit=100``, one page of 100 reports, against GETting the same 100
  jobs one request at a time.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import httpx
import psycopg

from bench import procs, workload
from bench.figures import Figure, median
from bench.harness import BenchError, Context
from schema import tenants

NAME = "api"


def _timed(call: Callable[[], httpx.Response], status: int) -> float:
    t0 = time.perf_counter()
    response = call()
    elapsed = time.perf_counter() - t0
    if response.status_code != status:
        raise BenchError(f"answered {response.status_code}, not {status}: {response.text[:300]}")
    return elapsed * 1000


def run(ctx: Context) -> list[Figure]:
    count = 30 if ctx.sizes.quick else 200
    text = workload.prose(10_000, seed=10)
    body = json.dumps({"raw_text": text, "max_chunk_chars": 1000}).encode()
    json_type = {"Content-Type": "application/json"}
    (ctx.tmp / "open").mkdir(exist_ok=True)
    with (
        ctx.database("api") as url,
        psycopg.connect(url, autocommit=True) as admin,
        procs.gunicorn(url, ctx.tmp, CHUNKQ_AUTH="on") as (keyed_base, _),
        procs.gunicorn(url, ctx.tmp / "open", CHUNKQ_AUTH="off") as (open_base, _),
    ):
        key = tenants.create_key(admin, "bench").key
        keyed = httpx.Client(base_url=keyed_base, timeout=60,
                             headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        anonymous = httpx.Client(base_url=open_base, timeout=60)
        with keyed, anonymous:
            job = keyed.post("/v1/analyze", content=body, headers=json_type).json()["job_id"]
            pairs: dict[str, tuple[list[float], list[float]]] = {
                name: ([], []) for name in ("get", "post", "replay", "list")
            }
            replay = {**json_type, "Idempotency-Key": "replayed"}
            for n in range(count + 2):  # the first two warm both paths
                samples = [
                    ("get", _timed(lambda: keyed.get(f"/v1/analyze/{job}"), 200),
                     _timed(lambda: anonymous.get(f"/v1/analyze/{job}"), 200)),
                    ("post", _timed(lambda: keyed.post("/v1/analyze", content=body,
                                                       headers=json_type), 202),
                     _timed(lambda: anonymous.post("/v1/analyze", content=body,
                                                   headers=json_type), 202)),
                    ("replay", _timed(lambda: keyed.post("/v1/analyze", content=body,
                                                         headers=replay), 202),
                     _timed(lambda: keyed.post(
                         "/v1/analyze", content=body,
                         headers={**json_type, "Idempotency-Key": str(uuid.uuid4())}), 202)),
                ]  # fmt: skip
                if n >= 2:
                    for name, ours, theirs in samples:
                        pairs[name][0].append(ours)
                        pairs[name][1].append(theirs)
            # The list: the newest 100 of the key's jobs, in one page or 100 GETs.
            for _ in range(100 - 2 * (count + 2) - 2):
                keyed.post("/v1/analyze", content=body, headers=json_type)
            for n in range(max(5, count // 10) + 1):
                page = keyed.get("/v1/analyze", params={"limit": "100"})
                ids = [j["job_id"] for j in page.json()["data"]]
                if len(ids) != 100:
                    raise BenchError(f"a page of {len(ids)} jobs, not 100")
                listed = _timed(lambda: keyed.get("/v1/analyze", params={"limit": "100"}), 200)
                t0 = time.perf_counter()
                for job_id in ids:
                    keyed.get(f"/v1/analyze/{job_id}")
                one_by_one = (time.perf_counter() - t0) * 1000
                if n:
                    pairs["list"][0].append(listed)
                    pairs["list"][1].append(one_by_one)
        workload.reset(admin)
    named = {
        "get": ("GET report, with a key", "the same GET, auth off", 1.5),
        "post": ("POST 10 KB, with a key", "the same POST, auth off", 1.5),
        "replay": ("POST replayed by Idempotency-Key", "POST with a new key", 1.0),
        "list": ("GET list, a page of 100", "100 GETs of one report each", 1.0),
    }
    figures = []
    for name, (value, reference) in pairs.items():
        label, ref_label, most = named[name]
        ctx.say(f"{label}: median {median(value):.2f} ms; {ref_label}: {median(reference):.2f} ms")
        figures.append(
            Figure(
                NAME,
                f"{label} (n={len(value)})",
                median(value),
                "ms",
                ref_label,
                median(reference),
                ratio_max=most,
            )
        )
    return figures
