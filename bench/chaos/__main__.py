"""Chaos soak: gunicorn and workers on a throwaway PostgreSQL, with workers SIGKILLed, paused
past their leases and switched to another provider, and the database restarted, while jobs
pour in; in a calm phase in the middle, one job row is held locked from outside and the other
jobs' throughput is measured against the window just before. Then every contract invariant is
checked in SQL and over HTTP against the texts that were submitted.

    python -m bench.chaos [--duration S] [--workers N] [--jobs N] [--seed N] [--lock-s S]
                          [--lock-any-status] [--switch-to PROVIDER] [--database-url URL]

Prints each violation as found and the figures at the end; exits 1 if there was any violation.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
from types import FrameType

from bench.chaos.settings import DRAIN_S, PROVIDER
from bench.chaos.soak import Soak
from bench.chaos.traffic import wall_seconds


class HardDeadline(Exception):
    """The whole soak overran its time budget."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=120, help="seconds of chaos")
    parser.add_argument("--workers", type=int, default=3, help="worker processes at a time")
    parser.add_argument("--jobs", type=int, default=360, help="jobs submitted during the run")
    parser.add_argument("--seed", type=int, default=random.randrange(1_000_000))
    parser.add_argument(
        "--lock-s", type=float, default=20, help="seconds one job row is held locked (0: none)"
    )
    parser.add_argument(
        "--lock-any-status",
        action="store_true",
        help="the held job may be one not started yet (PENDING), not only a PROCESSING one",
    )
    parser.add_argument(
        "--switch-to",
        default="builtin",
        choices=["builtin", "simulated", ""],
        help=f"provider half the workers switch to mid-run ('' or {PROVIDER}: none)",
    )
    parser.add_argument("--database-url", help="use this server (then no PostgreSQL restarts)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.workers < 1 or args.jobs < 1 or args.lock_s < 0:
        parser.error("--duration, --workers and --jobs must be positive, --lock-s not negative")
    if args.switch_to == PROVIDER:
        args.switch_to = ""
    budget = int(wall_seconds(args) + DRAIN_S + 180)  # setup, chaos, drain, checks: all of it

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    def overrun(signum: int, _frame: FrameType | None) -> None:
        raise HardDeadline(f"the soak overran its hard deadline of {budget}s")

    signal.signal(signal.SIGINT, interrupt)  # even if our parent left SIGINT ignored
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGALRM, overrun)
    signal.alarm(budget)
    soak, code = Soak(args), 0
    try:
        soak.run()
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        code = 130
    except HardDeadline as exc:
        soak.violate(str(exc))
    finally:
        signal.alarm(0)
        soak.cleanup()
    soak.report()
    return code or (1 if soak.violations else 0)


if __name__ == "__main__":
    sys.exit(main())
