"""gzip of large responses for clients that accept it, and of nothing else."""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
import pytest

from tests.processes import gunicorn
from web.compress import MIN_BYTES


def test_gzip__a_large_response_is_compressed_when_the_client_accepts_it(client: Any) -> None:
    plain = client.get("/openapi.json")
    assert len(plain.get_data()) > MIN_BYTES
    assert "Content-Encoding" not in plain.headers
    assert plain.headers["Vary"] == "Accept-Encoding"

    zipped = client.get("/openapi.json", headers={"Accept-Encoding": "br;q=1.0, gzip;q=0.5"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.headers["Vary"] == "Accept-Encoding"
    assert int(zipped.headers["Content-Length"]) == len(zipped.get_data())
    assert len(zipped.get_data()) < len(plain.get_data()) / 3
    assert gzip.decompress(zipped.get_data()) == plain.get_data()


@pytest.mark.parametrize("accept", ["identity", "gzip;q=0", "deflate, br"])
def test_gzip__not_when_the_client_does_not_accept_it(client: Any, accept: str) -> None:
    response = client.get("/openapi.json", headers={"Accept-Encoding": accept})
    assert "Content-Encoding" not in response.headers
    json.loads(response.get_data())


def test_gzip__a_wildcard_accepts_it(client: Any) -> None:
    response = client.get("/openapi.json", headers={"Accept-Encoding": "*"})
    assert response.headers["Content-Encoding"] == "gzip"


def test_gzip__not_for_a_small_response(client: Any) -> None:
    response = client.get("/healthz", headers={"Accept-Encoding": "gzip"})
    assert len(response.get_data()) < MIN_BYTES
    assert "Content-Encoding" not in response.headers
    assert response.get_json() == {"status": "ok"}


def test_gzip__not_for_head(client: Any) -> None:
    response = client.head("/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in response.headers


def test_gzip__not_for_a_streamed_file(client: Any) -> None:
    with client.get("/docs/swagger-ui-bundle.js", headers={"Accept-Encoding": "gzip"}) as r:
        assert r.status_code == 200
        assert "Content-Encoding" not in r.headers
        assert r.get_data().lstrip().startswith(b"/*")  # plain JavaScript


def test_gzip__not_for_what_does_not_compress(client: Any) -> None:
    with client.get("/docs/favicon-32x32.png", headers={"Accept-Encoding": "gzip"}) as r:
        assert r.status_code == 200
        assert "Content-Encoding" not in r.headers


@pytest.mark.slow
def test_gzip__a_big_job_report_over_gunicorn(database_url: str) -> None:
    # 20,000 chunks, cancelled at once: the report lists each (~1.5 MB of JSON).
    text = "Lorem ipsum dolor sit amet, consectetur. " * 5000
    with gunicorn(database_url) as base, httpx.Client(base_url=base, timeout=60) as plain:
        del plain.headers["Accept-Encoding"]  # httpx sends one by default
        job = plain.post("/v1/analyze", json={"raw_text": text, "max_chunk_chars": 10}).json()
        assert job["chunks_total"] > 19_000
        assert plain.post(f"/v1/analyze/{job['job_id']}/cancel").status_code == 200
        url = f"/v1/analyze/{job['job_id']}"

        unzipped = plain.get(url)
        assert unzipped.status_code == 200
        assert "content-encoding" not in unzipped.headers
        assert unzipped.headers["vary"] == "Accept-Encoding"
        size = int(unzipped.headers["content-length"])
        assert size == len(unzipped.content) > 1_000_000

        with plain.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as zipped:
            assert zipped.status_code == 200
            assert zipped.headers["content-encoding"] == "gzip"
            wire = b"".join(zipped.iter_raw())
        assert int(zipped.headers["content-length"]) == len(wire) < size / 5
        body = json.loads(gzip.decompress(wire))
        assert body == unzipped.json()
        assert len(body["analysis_result"]["chunks"]) == job["chunks_total"]
