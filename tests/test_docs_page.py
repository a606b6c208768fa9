"""``/docs`` in a real browser (Debian's Chromium driven by Playwright): Swagger UI renders
every operation of ``/openapi.json`` from files the API serves itself, asks for nothing from
any other host, and "Try it out" with a key sends a real request that the API answers.

Skipped when no Chromium is installed, unless CHUNKQ_REQUIRE_BROWSER=1 (the ``browser``
fixture in conftest.py).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from schema import tenants
from tests.processes import gunicorn

pytestmark = pytest.mark.slow


def test_docs__swagger_ui_renders_every_operation_and_tries_one_with_a_key(
    database_url: str, browser: Any
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        key = tenants.create_key(conn, "docs").key
    with gunicorn(database_url, CHUNKQ_AUTH="on") as base:
        document = httpx.get(f"{base}/openapi.json").json()
        operations = [(m, p) for p, item in document["paths"].items() for m in item]
        page = browser.new_page()
        elsewhere: list[str] = []
        errors: list[str] = []

        def only_here(route: Any) -> None:
            url = route.request.url
            if urlsplit(url).netloc != urlsplit(base).netloc and not url.startswith("data:"):
                elsewhere.append(url)
                route.abort()
            else:
                route.continue_()

        page.route("**/*", only_here)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{base}/docs")
        page.wait_for_selector(".opblock", timeout=30_000)
        assert page.locator(".opblock").count() == len(operations)
        assert document["info"]["title"] in page.locator(".info .title").inner_text()

        # Authorize with the key, then "Try it out" on the list of jobs.
        page.locator("button.authorize").first.click()
        page.locator(".modal-ux input").first.fill(key)
        page.locator(".modal-ux button.authorize").click()
        page.locator(".modal-ux button.close-modal").click()
        listing = page.locator("#operations-jobs-listJobs")
        listing.locator(".opblock-summary").first.click()
        listing.locator("button.try-out__btn").click()
        listing.locator("button.execute").click()
        status = listing.locator(".live-responses-table tr.response .response-col_status")
        status.wait_for(timeout=30_000)
        assert status.inner_text().strip().startswith("200"), status.inner_text()
        page.close()
    assert elsewhere == [], "the page asked another host for something"
    assert errors == []
