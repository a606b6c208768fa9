"""The dashboard at ``/ui/`` in a real browser (Debian's Chromium driven by Playwright),
against a real gunicorn and real ``python -m workerd`` workers, with auth on.

Every page is watched: no uncaught exception, no console error, no request to any other
host. Setting CHUNKQ_UI_SCREENSHOTS to a directory also saves the README's screenshots
there (ui-job.png, ui-jobs.png).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from schema import tenants
from tests.processes import gunicorn, start_worker, stop, wait_for

pytestmark = pytest.mark.slow

# Deadlines for what the page shows: its polls run every second or two.
SHOWN_MS = 15_000


class Watched:
    """A browser page that records console errors, uncaught exceptions and any request to
    another host (refused), and accepts the page's confirm() dialogs."""

    def __init__(self, browser: Any, base: str) -> None:
        self.base = base
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.elsewhere: list[str] = []
        self.page.route("**/*", self._only_here)
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on(
            "console",
            lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None,
        )
        self.page.on("dialog", lambda dialog: dialog.accept())

    def _only_here(self, route: Any) -> None:
        url = route.request.url
        if urlsplit(url).netloc != urlsplit(self.base).netloc and not url.startswith(
            ("data:", "blob:")
        ):
            self.elsewhere.append(url)
            route.abort()
        else:
            route.continue_()

    def goto(self, path: str) -> Any:
        self.page.goto(f"{self.base}{path}")
        return self.page

    def enter_key(self, key: str) -> None:
        """Answer the page's key dialog."""
        dialog = self.page.locator("#key-dialog")
        dialog.wait_for(state="visible", timeout=SHOWN_MS)
        self.page.fill("#key-input", key)
        self.page.click("#key-form button[type=submit]")
        dialog.wait_for(state="hidden", timeout=SHOWN_MS)

    def mark(self) -> None:
        """Tag the document, so ``still_marked`` can tell that it was never reloaded."""
        self.page.evaluate("window.__unreloaded = true")

    def still_marked(self) -> bool:
        return bool(self.page.evaluate("window.__unreloaded === true"))

    def assert_clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.elsewhere == [], "the page asked another host for something"


@contextmanager
def serving(database_url: str, tmp_path: Path, **env: str) -> Iterator[str]:
    """gunicorn with auth on, and one worker listening, both with ``env``."""
    worker = start_worker(database_url, "--concurrency", "2", log=tmp_path / "worker.log", **env)
    try:
        wait_for(
            lambda: "listening for work" in (tmp_path / "worker.log").read_text(),
            30,
            "the worker to listen",
            interval=0.05,
        )
        with gunicorn(database_url, CHUNKQ_AUTH="on", **env) as base:
            yield base
    finally:
        stop(worker)


def make_key(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return tenants.create_key(conn, "dashboard").key


def submit(base: str, key: str, text: str, chars: int, **more: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{base}/v1/analyze",
        json={"raw_text": text, "max_chunk_chars": chars, **more},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return response.json()


def report(base: str, key: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{base}/v1/analyze/{job_id}?chunks=false",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def badge(page: Any) -> str:
    return str(page.locator("#job-status").inner_text())


# Paragraphs of about 190 characters, so max_chunk_chars=200 makes one chunk of each.
PARAGRAPHS = [f"Paragraph {n} tells of a quiet day in the harbour town. " * 3 for n in range(16)]
POISONED = [*PARAGRAPHS[:5], "This paragraph is POISON and always fails. " * 4, *PARAGRAPHS[5:]]


def test_ui__submit_live_progress_failures_cancel_and_a_1000_chunk_job(
    database_url: str, browser: Any, tmp_path: Path
) -> None:
    key = make_key(database_url)
    with serving(
        database_url,
        tmp_path,
        CHUNKQ_PROVIDER="simulated",
        CHUNKQ_SIM_LATENCY_MS="400",
        CHUNKQ_SIM_FAIL_PATTERN="POISON",
        CHUNKQ_MAX_ATTEMPTS="2",
        CHUNKQ_BACKOFF_BASE_S="0.05",
        CHUNKQ_BACKOFF_MAX_S="0.1",
    ) as base:
        tab = Watched(browser, base)
        page = tab.goto("/ui/")
        # The key prompt; closed with Escape, the header's button opens it again.
        page.locator("#key-dialog").wait_for(state="visible", timeout=SHOWN_MS)
        page.keyboard.press("Escape")
        page.locator("#key-dialog").wait_for(state="hidden", timeout=SHOWN_MS)
        page.click("#enter-key")
        # Once: the tab keeps the key for every page after this one.
        tab.enter_key(key)
        assert page.locator("#enter-key").is_hidden()
        page.wait_for_selector("#jobs-empty:not([hidden])", timeout=SHOWN_MS)

        # Submit from the form, and land on the job's page.
        page.click("a.button[href=submit]")
        page.fill("#text", "\n\n".join(POISONED))
        page.fill("#max-chunk-chars", "200")
        page.click("#submit-button")
        page.wait_for_url("**/ui/jobs/*", timeout=SHOWN_MS)
        job_id = page.url.rsplit("/", 1)[1]
        total = report(base, key, job_id)["chunks_total"]
        assert total == len(POISONED)

        # Every value the percent shows, from now on, without a reload.
        tab.mark()
        # Functions, not expressions, for the page to run: the page's CSP forbids eval.
        page.evaluate(
            """() => {
              const pct = document.getElementById("progress-pct");
              window.__seen = [pct.textContent];
              new MutationObserver(() => window.__seen.push(pct.textContent))
                .observe(pct, {childList: true, characterData: true, subtree: true});
            }"""
        )
        page.wait_for_function(
            "() => document.getElementById('job-status').textContent === 'PARTIAL_SUCCESS'",
            timeout=60_000,
        )
        assert tab.still_marked()
        seen = [float(v.rstrip("%")) for v in page.evaluate("window.__seen") if v.endswith("%")]
        assert seen[-1] == 100.0
        assert len({v for v in seen if 0 < v < 100}) >= 2, seen
        assert seen == sorted(seen), seen

        # One cell per chunk; the poisoned chunk failed, in the grid and in the document.
        assert page.locator("#grid .cell").count() == total
        assert page.locator("#grid .cell.c-failed").count() == 1
        assert page.locator("#grid .cell.c-succeeded").count() == total - 1
        failed = page.locator("#document article.chunk.c-failed")
        failed.wait_for(timeout=SHOWN_MS)
        assert failed.count() == 1
        assert "POISON" in failed.locator(".chunk-text").inner_text()
        assert "simulated failure" in failed.locator(".chunk-result").inner_text()
        page.locator("#grid .cell.c-failed").hover()
        detail = page.locator("#chunk-detail").inner_text()
        assert "Chunk 5: failed, 2 attempts" in detail and "simulated failure" in detail

        # The list updates itself: a job submitted elsewhere shows up, and moves.
        page.click("header nav a >> text=Jobs")
        page.wait_for_selector(f"tr[data-job-id='{job_id}']", timeout=SHOWN_MS)
        tab.mark()
        # Each chunk unlike any other, so none is answered from the result cache.
        entries = [
            f"Entry {n} of the long log: the tide came in and went out. " * 3 for n in range(60)
        ]
        slow = submit(base, key, "\n\n".join(entries), 200, metadata={"doc": "<b>x</b>"})
        row = page.locator(f"tr[data-job-id='{slow['job_id']}']")
        row.wait_for(timeout=SHOWN_MS)
        page.wait_for_selector(
            f"tr[data-job-id='{slow['job_id']}'][data-status='PROCESSING']", timeout=SHOWN_MS
        )
        assert tab.still_marked()
        # Metadata is shown as text, never as markup.
        assert row.locator(".meta").inner_text() == "doc=<b>x</b>"

        # Cancel from the job's page.
        row.locator("a").click()
        page.wait_for_url(f"**/ui/jobs/{slow['job_id']}", timeout=SHOWN_MS)
        page.locator("#cancel").click()
        page.wait_for_function(
            "() => document.getElementById('job-status').textContent === 'CANCELLED'",
            timeout=SHOWN_MS,
        )
        assert report(base, key, slow["job_id"])["status"] == "CANCELLED"
        assert page.locator("#cancel").is_hidden()

        # A 1,000-chunk job: its grid and a page of its document render in moments.
        big = submit(base, key, "abcdefghi " * 1000, 10)
        assert big["chunks_total"] == 1000
        started = time.monotonic()
        page.goto(f"{base}/ui/jobs/{big['job_id']}")
        page.wait_for_function(
            "() => document.querySelectorAll('#grid .cell').length === 1000"
            " && document.querySelectorAll('#document article.chunk').length === 20",
            timeout=SHOWN_MS,
        )
        assert time.monotonic() - started < 10
        page.locator("#doc-pager-top button", has_text="»").click()
        page.wait_for_selector("#chunk-999", timeout=SHOWN_MS)
        page.locator("#grid .cell[data-index='500']").click()
        page.wait_for_selector("#chunk-500.picked", timeout=SHOWN_MS)
        httpx.post(
            f"{base}/v1/analyze/{big['job_id']}/cancel",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        tab.assert_clean()


def test_ui__a_finished_job_shows_its_chart_keywords_document_and_downloads(
    database_url: str, browser: Any, tmp_path: Path
) -> None:
    key = make_key(database_url)
    moods = [
        "The launch was a wonderful success and the whole team was delighted and proud.",
        "Then the servers failed, customers were furious, and the night was awful.",
        "By morning the fix held; a calm, ordinary day of routine maintenance followed.",
        "Reviews called the product brilliant, delightful and a joy to use every day.",
    ]
    text = "\n\n".join(f"{m} {m}" for m in moods * 5)
    with serving(database_url, tmp_path, CHUNKQ_PROVIDER="builtin") as base:
        other = submit(base, key, "A short note about the harbour. " * 20, 300)
        stopped = submit(base, key, "".join(f"Line {n} of a log. " for n in range(4000)), 400)
        httpx.post(
            f"{base}/v1/analyze/{stopped['job_id']}/cancel",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        job = submit(base, key, text, 200, metadata={"doc": "launch-review", "team": "web"})
        wait_for(
            lambda: (
                {report(base, key, j)["status"] for j in (job["job_id"], other["job_id"])}
                == {"COMPLETED"}
            ),
            60,
            "both jobs to complete",
            interval=0.1,
        )
        total = job["chunks_total"]
        assert total == len(moods) * 5

        tab = Watched(browser, base)
        page = tab.goto(f"/ui/jobs/{job['job_id']}")
        tab.enter_key(key)
        page.wait_for_selector("#summary .keywords .chip", timeout=SHOWN_MS)
        assert badge(page) == "COMPLETED"
        assert page.locator("#progress-pct").inner_text() == "100%"
        # The chart: one point per succeeded chunk, at its score, some above and some below 0.
        points = page.locator("#chart svg circle")
        points.first.wait_for(timeout=SHOWN_MS)
        assert points.count() == total
        assert page.locator("#chart svg circle.positive").count() >= 1
        assert page.locator("#chart svg circle.negative").count() >= 1
        # The document: each chunk's text beside its result.
        page.wait_for_function(
            f"() => document.querySelectorAll('#document article.chunk').length === {total}",
            timeout=SHOWN_MS,
        )
        first = page.locator("#chunk-0")
        assert moods[0] in first.locator(".chunk-text").inner_text()
        assert "sentiment" in first.locator(".chunk-result").inner_text()

        with page.expect_download(timeout=SHOWN_MS) as saved:
            page.click("#download-json")
        body = json.loads(Path(saved.value.path()).read_text())
        assert body["job_id"] == job["job_id"]
        assert len(body["analysis_result"]["chunks"]) == total
        with page.expect_download(timeout=SHOWN_MS) as saved:
            page.click("#download-ndjson")
        lines = Path(saved.value.path()).read_text().splitlines()
        assert [json.loads(line)["index"] for line in lines] == list(range(total))

        shots = os.environ.get("CHUNKQ_UI_SCREENSHOTS")
        if shots:
            page.locator("#chunk-1").hover()
            page.screenshot(path=str(Path(shots) / "ui-job.png"), full_page=False)
        page.click("header nav a >> text=Jobs")
        page.wait_for_selector(f"tr[data-job-id='{other['job_id']}']", timeout=SHOWN_MS)
        assert page.locator("tbody tr").count() == 3
        if shots:
            page.screenshot(path=str(Path(shots) / "ui-jobs.png"))
        tab.assert_clean()


def test_ui__with_auth_off_no_key_is_asked_and_the_list_pages_and_filters(
    database_url: str, browser: Any
) -> None:
    with gunicorn(database_url, CHUNKQ_AUTH="off") as base:
        jobs = []
        for n in range(21):
            posted = httpx.post(
                f"{base}/v1/analyze", json={"raw_text": f"Text {n}.", "max_chunk_chars": 100}
            )
            assert posted.status_code == 202, posted.text
            jobs.append(posted.json()["job_id"])
        cancelled = httpx.post(f"{base}/v1/analyze/{jobs[0]}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        tab = Watched(browser, base)
        page = tab.goto("/ui/")
        # Newest first, 20 a page: the oldest (cancelled) job is on the second.
        page.wait_for_selector(f"tr[data-job-id='{jobs[-1]}']", timeout=SHOWN_MS)
        assert page.locator("#key-dialog").is_hidden()
        assert page.locator("#key-state").inner_text() == "auth off"
        assert page.locator("tbody tr").count() == 20
        page.click("#older")
        page.wait_for_selector(f"tr[data-job-id='{jobs[0]}']", timeout=SHOWN_MS)
        assert page.locator("tbody tr").count() == 1
        page.click("#newer")
        page.wait_for_selector(f"tr[data-job-id='{jobs[-1]}']", timeout=SHOWN_MS)
        page.select_option("#status-filter", "CANCELLED")
        page.wait_for_function(
            "() => document.querySelectorAll('tbody tr').length === 1", timeout=SHOWN_MS
        )
        assert page.locator("tbody tr").get_attribute("data-job-id") == jobs[0]
        assert page.url.endswith("/ui/?status=CANCELLED")
        tab.assert_clean()
