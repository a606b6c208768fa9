"""What the chaos soak found: its counters and violations, kept as the run goes, and the
report printed at the end."""

from __future__ import annotations

import argparse
import sys
import threading
from collections import Counter

from bench.chaos.settings import MIN_LOCK_RATIO
from bench.heldlock import HeldLock

FIGURES = [  # printed in this order; the ones counted in SQL come from ``figures_from``
    "jobs acknowledged (202)", "jobs in the database", "jobs COMPLETED", "jobs PARTIAL_SUCCESS",
    "jobs FAILED", "jobs created without a 202 (answer lost to an outage)", "chunks",
    "chunks failed for good", "  of them holding the marker", "failed attempts logged",
    "  of them lost workers (rescued)", "late results dropped by the fence",
    "chunk transitions logged", "workers started", "worker SIGKILLs", "worker SIGTERMs",
    "  of them exiting 0 in time", "replacement workers", "worker pauses (SIGSTOP, SIGCONT)",
    "  of them longer than the lease", "  late results they had dropped by the fence",
    "workers switched provider (SIGTERM, restart)", "jobs with results from two providers",
    "PostgreSQL restarts (fast)", "PostgreSQL crashes (immediate stop, start)",
    "restart probes answered 503", "restart probes answered 200", "crash probes answered 503",
    "POST answered 503 in an outage (retried)", "GET answered 503 in an outage",
    "pool-reset tracebacks in gunicorn.log", "status polls", "drain seconds",
]  # fmt: skip


class Tally:
    """The run's counters and violations; any thread may add to them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.n: Counter[str] = Counter()
        self.violations: list[str] = []

    def violate(self, message: str) -> None:
        """Record a violation, and print it at once."""
        with self.lock:
            self.violations.append(message)
        print(f"VIOLATION: {message}", file=sys.stderr, flush=True)

    def count(self, key: str, k: int = 1) -> None:
        """Add ``k`` to the figure ``key``."""
        with self.lock:
            self.n[key] += k


def report(
    tally: Tally, args: argparse.Namespace, acknowledged: int, held: HeldLock | None
) -> None:
    """Print the violations (the first hundred), every figure, and the held-lock phase's."""
    if tally.violations:
        print(f"\n{len(tally.violations)} violation(s):")
        print("\n".join(f"- {v}" for v in tally.violations[:100]))
        if len(tally.violations) > 100:
            print(f"... and {len(tally.violations) - 100} more")
    a = args
    print(f"\nchaos soak: {a.duration:g}s, {a.workers} workers, {a.jobs} jobs, seed {a.seed}")
    if a.database_url:
        print("  (no PostgreSQL restarts: --database-url names a server we do not control)")
    tally.n["jobs acknowledged (202)"] = acknowledged
    for key in [*FIGURES, *sorted(set(tally.n) - set(FIGURES))]:
        print(f"  {key:<56}{tally.n[key]:>8}")
    _report_held(args, held)
    print(f"  {'violations found':<56}{len(tally.violations):>8}")


def _report_held(args: argparse.Namespace, held: HeldLock | None) -> None:
    if held is None or held.job_id is None or held.reference is None or held.held is None:
        print(f"  {'held-lock phase':<56}{'not run':>8}")
        return
    before, before_others, under = held.rates()
    after, ratio = held.terminal_after_s, held.ratio
    lines: list[tuple[str, object]] = [
        (f"held job row ({args.lock_s:g}s FOR UPDATE): open chunks",
         held.pending_at_lock),
        ("  most of them holding worker slots at once", held.most_slots_held),
        ("  chunks/s before the lock, all jobs", f"{before:.1f}"),
        ("  chunks/s before the lock, other jobs", f"{before_others:.1f}"),
        ("  chunks/s under the lock, other jobs", f"{under:.1f}"),
        (f"  ratio under/before (target >= {MIN_LOCK_RATIO:g})",
         "n/a" if ratio is None else f"{ratio:.2f}"),
        ("  fewest due chunks of other jobs, before", held.reference.min_backlog),
        ("  fewest due chunks of other jobs, under", held.held.min_backlog),
        ("  its first result recorded, seconds after the release",
         "none" if held.recorded_after_s is None else f"{held.recorded_after_s:.1f}"),
        ("  held job terminal, seconds after the release",
         "no" if after is None else f"{after:.1f}"),
    ]  # fmt: skip
    for key, value in lines:
        print(f"  {key:<56}{value!s:>8}")
