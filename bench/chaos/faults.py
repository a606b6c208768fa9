"""The chaos soak's fault schedule: workers hit and paused every few seconds, a provider
switch, PostgreSQL restarted and crashed, and in the middle a calm phase with one job row
held locked from outside."""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from bench.chaos.fleet import Fleet
from bench.chaos.report import Tally
from bench.chaos.settings import CRASH_OUTAGE_S, MIN_LOCK_RATIO, PAUSE_EVERY_S, SETTLE_S
from bench.chaos.traffic import Traffic
from bench.heldlock import HeldLock, hold_one_job
from schema.embedded import EmbeddedPostgres


class Faults:
    """One run's faults, against the ``fleet``, the ``server`` (None: a server we do not
    control, so no outages) and the database at ``url``."""

    def __init__(
        self,
        args: argparse.Namespace,
        rng: random.Random,
        tally: Tally,
        fleet: Fleet,
        traffic: Traffic,
        server: EmbeddedPostgres | None,
        url: str,
    ) -> None:
        self.args = args
        self.rng = rng
        self.tally = tally
        self.fleet = fleet
        self.traffic = traffic
        self.server = server
        self.url = url
        self.chaos_s = 0.0  # seconds of chaos so far (the calm phase does not count)
        self.held: HeldLock | None = None

    def chaos(self) -> None:
        """--duration seconds of faults, with the held-lock phase in the middle (``calm``).
        Faults: a random worker hit every 2-5 s (one in four a SIGTERM, the rest SIGKILL) and
        replaced; one SIGSTOPped every 4-8 s for a pause alternately shorter and longer than
        the lease; a quarter of the way in, half the workers restarted on --switch-to;
        PostgreSQL restarted once a minute, alternating fast restarts and crashes."""
        d = self.args.duration
        n = 0 if self.server is None else max(1, round(d / 60))
        kinds = ["crash"] if n == 1 else ["restart", "crash"] * n
        events = [(d * (i + 1) / (n + 1), kinds[i]) for i in range(n)]
        if self.args.switch_to:
            events.append((d / 4, "switch"))
        events.sort()
        if self.args.lock_s > 0:
            self.faults(events, d / 2)
            self.calm()
        self.faults(events, d)

    def faults(self, events: list[tuple[float, str]], until: float) -> None:
        """Faults until ``until`` seconds of chaos in all; ``events`` (at seconds of chaos)
        are taken off the list as they happen."""
        started, base = time.monotonic(), self.chaos_s

        def elapsed() -> float:
            self.chaos_s = base + time.monotonic() - started
            return self.chaos_s

        next_hit = base + self.rng.uniform(2, 5)
        next_pause = base + self.rng.uniform(*PAUSE_EVERY_S)
        while elapsed() < until:
            self.fleet.tend()
            if events and self.chaos_s >= events[0][0]:
                kind = events.pop(0)[1]
                if kind == "switch":
                    self.fleet.switch_provider(self.args.switch_to)
                else:
                    self.outage(kind)
            elif self.chaos_s >= next_hit:
                self.fleet.hit()
                next_hit = elapsed() + self.rng.uniform(2, 5)
            elif self.chaos_s >= next_pause:
                self.fleet.pause()
                next_pause = elapsed() + self.rng.uniform(*PAUSE_EVERY_S)
            time.sleep(0.1)

    def calm(self) -> None:
        """The held-lock phase, free of other faults so that its two windows compare: every
        worker resumed and up, no SIGTERMed one left, SETTLE_S for rescues and backoffs to
        play out; then ``hold_one_job``. Judged here: a held job row must leave the other
        jobs at least MIN_LOCK_RATIO of their throughput, as long as they had work due."""
        fleet = self.fleet
        fleet.resume_all()
        deadline = time.monotonic() + 60
        while fleet.stopping or not all(w.up() for w in fleet.workers):
            if time.monotonic() > deadline:
                break
            fleet.tend()
            time.sleep(0.1)
        until = time.monotonic() + SETTLE_S
        while time.monotonic() < until:
            fleet.tend()
            time.sleep(0.1)
        started = self.tally.n["workers started"]
        self.held = held = hold_one_job(
            self.url, self.args.lock_s, fleet.tend, any_status=self.args.lock_any_status
        )
        if self.tally.n["workers started"] != started:
            self.tally.violate(
                "a worker died during the held-lock phase: its windows do not compare"
            )
        if held.job_id is None or held.held is None:
            self.tally.violate("held-lock phase: no open job with chunks to do, nothing to lock")
            return
        print(f"held lock: {held.describe()}", file=sys.stderr, flush=True)
        ratio = held.ratio
        if held.held.min_backlog > 0 and (ratio is None or ratio < MIN_LOCK_RATIO):
            self.tally.violate(
                f"a job row held for {self.args.lock_s:g}s from outside cut the other jobs' "
                f"throughput below {MIN_LOCK_RATIO:g} of normal, with work due all along: "
                + held.describe()
            )

    def outage(self, kind: str) -> None:
        """``restart``: server.restart() (fast) while probing; ``crash``: immediate stop, a few
        seconds down (every probe must then be a 503 problem), start."""
        assert self.server is not None
        with self.traffic.lock:
            jobs = list(self.traffic.jobs)
        job_id = self.rng.choice(jobs) if jobs else str(uuid.uuid4())
        window = self.traffic.outage_begins()
        with httpx.Client(base_url=self.traffic.base, timeout=30) as http:
            if kind == "restart":
                with ThreadPoolExecutor(1) as pool:
                    restarting = pool.submit(self.server.restart)
                    while not restarting.done():
                        self.probe(http, job_id, down=False)
                        time.sleep(0.02)
                    restarting.result()
                self.tally.count("PostgreSQL restarts (fast)")
            else:
                self.server.stop(mode="immediate")
                until = time.monotonic() + CRASH_OUTAGE_S
                while time.monotonic() < until:
                    self.probe(http, job_id, down=True)
                    time.sleep(0.2)
                self.server.start()
                self.tally.count("PostgreSQL crashes (immediate stop, start)")
        window[1] = time.monotonic()

    def probe(self, http: httpx.Client, job_id: str, *, down: bool) -> None:
        """GET a job mid-outage: a 503 problem (or, around a fast restart, a 200)."""
        kind = "crash" if down else "restart"
        what = f"GET during a PostgreSQL {kind}"
        try:
            response = http.get(f"/v1/analyze/{job_id}")
        except httpx.HTTPError as exc:
            self.tally.violate(f"{what}: no answer ({exc!r})")
            return
        if response.status_code == 503 or (response.status_code == 200 and not down):
            self.tally.count(f"{kind} probes answered {response.status_code}")
            if response.status_code == 503:
                self.traffic.check_problem(what, response)
        else:
            self.tally.violate(f"{what}: {response.status_code} {response.text[:300]}")
