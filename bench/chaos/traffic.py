"""The chaos soak's traffic: jobs submitted and polled over HTTP all through the faults, each
answer judged (a 503 only inside an outage, as a problem with Retry-After; a job's status never
going back, its percent never down)."""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bench.chaos.report import Tally
from bench.chaos.settings import SETTLE_S, SLACK_S
from bench.chaos.texts import make_text

RANK = {"PENDING": 0, "PROCESSING": 1}  # anything else is terminal: rank 2


@dataclass
class Submitted:
    """A job as its submitter knows it, and the latest report the poller saw of it."""

    text: str
    max_chars: int
    total: int
    percent: float = 0.0
    status: str = "PENDING"


def wall_seconds(args: argparse.Namespace) -> float:
    """The traffic phase: --duration seconds of chaos plus the held-lock phase."""
    return args.duration + (SETTLE_S + 2 * args.lock_s if args.lock_s > 0 else 0.0)


class Traffic:
    """The submitter and poller threads, the jobs they know, and the outages they excuse."""

    def __init__(self, args: argparse.Namespace, rng: random.Random, tally: Tally) -> None:
        self.args = args
        self.rng = rng
        self.tally = tally
        self.base = ""  # the API's URL, once it is up
        self.jobs: dict[str, Submitted] = {}
        self.outages: list[list[float]] = []  # [start, end]; end is inf while it lasts
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.t0 = time.monotonic()

    def start(self) -> None:
        """Start submitting and polling; the submissions are paced from now."""
        self.t0 = time.monotonic()
        self.threads = [self._guarded(self.submitter), self._guarded(self.poller)]
        for thread in self.threads:
            thread.start()

    def halt(self, timeout: float) -> None:
        """Stop both threads, waiting up to ``timeout`` seconds for each."""
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout)

    def outage_begins(self) -> list[float]:
        """Open an outage window, whose end (inf until then) the caller sets when it is over."""
        window = [time.monotonic(), math.inf]
        with self.lock:
            self.outages.append(window)
        return window

    def judge(self, what: str, started: float, response: httpx.Response, expect: int) -> bool:
        """True for the expected status. A 503 during (or just after) an outage is counted and
        must be a problem with Retry-After; anything else is a violation."""
        if response.status_code == expect:
            return True
        with self.lock:
            now = time.monotonic()
            documented = any(s - 1 <= now and started <= e + SLACK_S for s, e in self.outages)
        if response.status_code == 503 and documented:
            retried = " (retried)" if expect == 202 else ""
            self.tally.count(f"{what.split()[0]} answered 503 in an outage{retried}")
            self.check_problem(what, response)
        else:
            self.tally.violate(f"{what} answered {response.status_code}: {response.text[:300]}")
        return False

    def check_problem(self, what: str, response: httpx.Response) -> None:
        """A 503 must be an RFC 9457 problem with a Retry-After in seconds."""
        kind = response.headers.get("content-type", "")
        retry = response.headers.get("retry-after", "")
        body: Any = None
        with contextlib.suppress(ValueError):
            body = response.json()
        ok = kind.startswith("application/problem+json") and retry.isdigit()
        if not (ok and isinstance(body, dict) and body.get("status") == 503):
            self.tally.violate(
                f"{what}: 503 without problem+json and Retry-After: {kind!r} {retry!r}"
            )

    def submitter(self) -> None:
        """Submit --jobs texts spread over 85% of the run (the calm phase included, so that it
        has a backlog), retrying those that got a 503."""
        rng = random.Random(self.rng.random())
        spacing = 0.85 * wall_seconds(self.args) / self.args.jobs
        with httpx.Client(base_url=self.base, timeout=30) as http:
            for i in range(self.args.jobs):
                text, max_chars = make_text(rng)
                payload = {"raw_text": text, "max_chunk_chars": max_chars}
                while not self.stop.is_set():
                    started = time.monotonic()
                    try:
                        response = http.post("/v1/analyze", json=payload)
                    except httpx.HTTPError as exc:
                        self.tally.violate(f"POST /v1/analyze: no answer ({exc!r})")
                    else:
                        if self.judge("POST /v1/analyze", started, response, 202):
                            body = response.json()
                            with self.lock:
                                job = Submitted(text, max_chars, body["chunks_total"])
                                self.jobs[body["job_id"]] = job
                            break
                    self.stop.wait(0.5)
                if self.stop.wait(max(0.0, self.t0 + (i + 1) * spacing - time.monotonic())):
                    return

    def poller(self) -> None:
        """GET unfinished jobs all along: status never goes back, percent never goes down."""
        rng = random.Random(self.rng.random())
        with httpx.Client(base_url=self.base, timeout=30) as http:
            while not self.stop.wait(0.05):
                with self.lock:
                    ids = [k for k, job in self.jobs.items() if job.status in RANK]
                if not ids:
                    continue
                job_id, started = rng.choice(ids), time.monotonic()
                try:
                    response = http.get(f"/v1/analyze/{job_id}")
                except httpx.HTTPError as exc:
                    self.tally.violate(f"GET /v1/analyze/{job_id}: no answer ({exc!r})")
                    continue
                if self.judge("GET /v1/analyze/<id>", started, response, 200):
                    self.watch(job_id, response.json())

    def watch(self, job_id: str, body: dict[str, Any]) -> None:
        """Check one GET of a job against the last one seen."""
        self.tally.count("status polls")
        job, status, percent = self.jobs[job_id], body["status"], body["percent"]
        if RANK.get(status, 2) < RANK.get(job.status, 2) or (
            job.status not in RANK and status != job.status
        ):
            self.tally.violate(f"job {job_id}: status went from {job.status} to {status}")
        if percent < job.percent:
            self.tally.violate(f"job {job_id}: percent went down from {job.percent} to {percent}")
        if (body["analysis_result"] is None) != (status in RANK):
            self.tally.violate(
                f"job {job_id}: analysis_result is wrongly null or set while {status}"
            )
        job.status, job.percent = status, max(job.percent, percent)

    def _guarded(self, body: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                body()
            except Exception as exc:  # a harness bug must fail the run, not vanish with its thread
                self.tally.violate(f"harness thread {body.__name__} crashed: {exc!r}")

        return threading.Thread(target=run, name=body.__name__, daemon=True)
