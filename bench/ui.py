"""The dashboard's job page in a real browser: how long until a big job's page is on screen.

One database and one gunicorn (2 workers, CHUNKQ_AUTH=on). Three finished jobs of one
tenant, of 10, 1,000 and 10,000 chunks (--quick: 10 and 1,000), each enqueued with
schema.queue.enqueue (about 190 characters a chunk, eight paragraphs in turn), claimed and
recorded with schema.queue.record as a worker does, with the builtin provider's results
(each paragraph analysed once, offline) and its merge: so the page has the sentiment chart,
the summary's keywords and the document's results that a real finished job has.

Debian's Chromium under Playwright (``/usr/bin/chromium``, or CHUNKQ_CHROMIUM) opens the
job pages in one tab whose sessionStorage already holds the key, as it does once the key
has been entered (tests/test_ui.py enters it in the page's dialog). Every navigation is
timed in the page: from its start (``performance.timeOrigin``) to the first frame drawn
with the whole grid (one cell per chunk) and the first page of the document (20 chunks,
the page's default) in the DOM, seen by a MutationObserver that an init script installs
before the page's own scripts run, then one requestAnimationFrame and a task, so the
frame's layout and paint are in. What happens in between is what a person waits for: the
HTML, the scripts and the stylesheet (from the cache after the first visit, as for anyone
who has opened a page of the dashboard before), the job's report, the chunk states (the
grid and the chart), and one page of chunks with their text (the document).

The reference is the same navigation to the 10-chunk job's page, measured in the same
tab, interleaved run by run: the page load, the scripts and the three API reads, each with
almost nothing in it. So the ratio is what a job's size costs the page beyond loading it;
a static page of the server would leave the three reads out and make the ratio look worse
than what a person perceives. Two warm-up visits of each page (one per gunicorn worker),
then the median of 9 visits each (--quick: 5).

Target: the 1,000-chunk page at most 3x the reference. The 10,000-chunk page is reported
against a loose 10x. Any error in a page's console, or a page that does not show its chart
(one point per chunk) and its summary's keywords, fails the benchmark.

Without Chromium, or without Playwright (the dev extra), it says so and gives no figures.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from bench import procs
from bench.figures import Figure, median
from bench.harness import BenchError, Context
from schema import queue, tenants
from workerd.providers.builtin import BuiltinProvider

NAME = "ui"
REFERENCE = 10
DOC_PAGE = 20  # the document view's default page size (web/templates/ui/job.html)
MAX_CHUNK_CHARS = 200
WARMUP = 2
SHOWN_MS = 30_000

# About 190 characters each: with max_chunk_chars=200 every chunk is one of them.
PARAGRAPHS = [
    "The launch was a wonderful success and the whole team was delighted and proud of it. ",
    "Then the servers failed, customers were furious, and the night was long and awful. ",
    "By morning the fix held; a calm, ordinary day of routine maintenance followed it. ",
    "Reviews called the product brilliant, delightful and a joy to use every single day. ",
    "Sales were flat in the north, where the weather kept most of the shops half empty. ",
    "A rival cut its prices, and for a week the forum was full of angry, bitter threads. ",
    "The harbour office moved to the old mill, with a view of the boats and the hills. ",
    "Nobody expected the audit to go well, but it did, and the board was very pleased. ",
]
PARAGRAPHS = [(p * 3)[:190].rsplit(" ", 1)[0] + " " for p in PARAGRAPHS]

# Installed in every page before its own scripts: marks the first frame that shows the
# grid and the document's first page, for the job ids the benchmark knows the counts of.
_WATCH = """(() => {
  const expected = %s;
  const want = expected[location.pathname.split("/").pop()];
  if (!want) return;
  const observer = new MutationObserver(() => {
    const grid = document.getElementById("grid");
    const doc = document.getElementById("document");
    if (!grid || !doc || grid.childElementCount !== want[0]) return;
    if (doc.querySelectorAll(":scope > article.chunk").length !== want[1]) return;
    observer.disconnect();
    requestAnimationFrame(() => setTimeout(() => { window.__benchShown = performance.now(); }));
  });
  observer.observe(document, { childList: true, subtree: true });
})();"""


def chromium() -> str | None:
    """Debian's Chromium, as tests/conftest.py finds it (Playwright's own download cannot
    run here)."""
    found = os.environ.get("CHUNKQ_CHROMIUM") or shutil.which("chromium")
    return found if found and Path(found).exists() else None


def _finished_job(
    conn: psycopg.Connection[Any], owner: str, chunks: int, results: list[str]
) -> uuid.UUID:
    """A COMPLETED job of ``chunks`` chunks: enqueued, claimed and recorded as a worker
    would, with the builtin provider's result of each paragraph and its merge."""
    job_id = uuid.uuid4()
    text = "".join(PARAGRAPHS[i % len(PARAGRAPHS)] for i in range(chunks))
    spans: list[tuple[int, int]] = []
    start = 0
    for i in range(chunks):
        end = start + len(PARAGRAPHS[i % len(PARAGRAPHS)])
        spans.append((start, end))
        start = end
    merge = queue.merge_with(BuiltinProvider().summarize)
    with conn.transaction():
        queue.enqueue(
            conn,
            job_id,
            text,
            spans,
            max_chunk_chars=MAX_CHUNK_CHARS,
            owner=owner,
            metadata={"bench": f"{chunks} chunks"},
        )
    with conn.transaction():
        claimed = queue.claim(conn, "bench-ui", chunks, lease_s=3600)
        if len(claimed) != chunks or {c.job_id for c in claimed} != {job_id}:
            raise BenchError(f"claimed {len(claimed)} chunks, not the job's {chunks}")
        outcomes: list[queue.Success | queue.Failure] = [
            queue.Success(c, {}, encoded=results[c.seq % len(results)]) for c in claimed
        ]
        recorded = queue.record(conn, "bench-ui", outcomes, merge, provider="builtin")
    if job_id not in recorded.finalized:
        raise BenchError(f"the {chunks}-chunk job was not finalized")
    return job_id


class _Tab:
    """One browser tab holding the key, that fails on any console error or page error."""

    def __init__(self, browser: Any, base: str, key: str, expected: dict[str, Any]) -> None:
        self.base = base
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.add_init_script(f"sessionStorage.setItem('chunkq.apiKey', {json.dumps(key)})")
        self.context.add_init_script(_WATCH % json.dumps(expected))
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on(
            "console",
            lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None,
        )

    def shown_ms(self, job_id: uuid.UUID) -> float:
        """Navigate to the job's page; ms from the navigation's start to the frame that
        shows the grid and the document's first page."""
        self.page.goto(f"{self.base}/ui/jobs/{job_id}", wait_until="commit")
        self.page.wait_for_function(
            "() => window.__benchShown !== undefined", timeout=SHOWN_MS, polling=50
        )
        if self.errors:
            raise BenchError(f"the job page logged errors: {self.errors[:3]}")
        return float(self.page.evaluate("() => window.__benchShown"))

    def check(self, chunks: int) -> dict[str, Any]:
        """What the page on screen shows beyond the grid, and what its reads weighed."""
        seen: dict[str, Any] = self.page.evaluate(
            """() => {
              const read = (part) => performance.getEntriesByType("resource")
                .find((e) => e.name.includes(part));
              return {
                points: document.querySelectorAll("#chart svg circle").length,
                keywords: document.querySelectorAll("#summary .keywords .chip").length,
                status: document.getElementById("job-status").textContent,
                states: read("/chunks/states")?.encodedBodySize ?? -1,
                page: read("/chunks?text=true")?.encodedBodySize ?? -1,
              };
            }"""
        )
        if (seen["points"], seen["status"]) != (chunks, "COMPLETED") or not seen["keywords"]:
            raise BenchError(f"the {chunks}-chunk job's page is not complete: {seen}")
        return seen

    def close(self) -> None:
        self.context.close()


def run(ctx: Context) -> list[Figure]:
    executable = chromium()
    if executable is None:
        ctx.say("skipped: no chromium installed (apt-get install chromium)")
        return []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        ctx.say("skipped: playwright is not installed (the dev extra)")
        return []
    sizes = [REFERENCE, 1_000] if ctx.quick else [REFERENCE, 1_000, 10_000]
    reps = 5 if ctx.quick else 9
    provider = BuiltinProvider()
    results = [json.dumps(provider.analyze(p), separators=(",", ":")) for p in PARAGRAPHS]
    times: dict[int, list[float]] = {n: [] for n in sizes}
    seen: dict[int, dict[str, Any]] = {}
    with (
        ctx.database("ui") as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        key = tenants.create_key(conn, "bench ui")
        t0 = time.monotonic()
        jobs = {n: _finished_job(conn, key.id, n, results) for n in sizes}
        ctx.say(f"ui: built finished jobs of {sizes} chunks in {time.monotonic() - t0:.1f}s")
        expected = {str(job): [n, min(n, DOC_PAGE)] for n, job in jobs.items()}
        with (
            procs.gunicorn(url, ctx.tmp, CHUNKQ_AUTH="on") as (base, _),
            sync_playwright() as playwright,
        ):
            browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            try:
                tab = _Tab(browser, base, key.key, expected)
                try:
                    for i in range(WARMUP + reps):
                        for n in sizes:
                            elapsed = tab.shown_ms(jobs[n])
                            if i == 0:
                                seen[n] = tab.check(n)
                            if i >= WARMUP:
                                times[n].append(elapsed)
                finally:
                    tab.close()
            finally:
                browser.close()
    med = {n: median(values) for n, values in times.items()}
    ctx.say(
        "ui: median "
        + ", ".join(f"{n:,} chunks {med[n]:.0f} ms" for n in sizes)
        + f" ({Path(executable).name}, {reps} visits each)"
    )
    ref = f"the {REFERENCE}-chunk job's page"
    figures = []
    for n in sizes[1:]:
        figures.append(
            Figure(
                NAME,
                f"job page of {n:,} chunks: grid + first document page shown, median (n={reps})",
                med[n],
                "ms",
                ref,
                med[REFERENCE],
                ratio_max=3.0 if n <= 1_000 else 10.0,
                note=f"runs {_runs(times[n])}; reference {_runs(times[REFERENCE])}; chunk"
                f" states {seen[n]['states']:,} B, a document page {seen[n]['page']:,} B as sent",
                extra={"runs_ms": times[n], "reference_runs_ms": times[REFERENCE]},
            )
        )
    return figures


def _runs(values: list[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values) + " ms"
