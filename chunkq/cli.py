"""``chunkq``: run everything locally (``up``, in chunkq/up.py, and ``down``), migrate, prune
and submit texts.

``up`` supervises gunicorn and ``python -m workerd`` processes; the HTTP client lives in
``chunkq.client``.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
from collections.abc import Callable
from typing import Any

from chunkq import client
from chunkq.up import (
    close_database,
    cmd_up,
    embedded_datadir,
    migrate,
    open_database,
    say,
    startup_errors,
)


def with_database(what: str, action: Callable[[str], str]) -> int:
    """Run ``action(url)`` on DATABASE_URL or the embedded database, print what it says,
    and turn failures into an exit code (2 for a setup problem, 1 for the action)."""
    db = None
    try:
        db = open_database()
        print(f"chunkq: {action(db.url)} (database: {db.label})")
        return 0
    except client.ClientError as exc:
        say(str(exc))
        return exc.code
    except startup_errors() as exc:
        say(f"{what} failed: {exc}")
        return 1
    finally:
        if db is not None:
            close_database(db)


def cmd_migrate(_args: argparse.Namespace) -> int:
    """Apply migrations to DATABASE_URL, or to the embedded database."""

    def run(url: str) -> str:
        migrate(url)
        return "the database is at the latest migration"

    return with_database("migration", run)


def cmd_down(_args: argparse.Namespace) -> int:
    """Stop the embedded PostgreSQL left running under $CHUNKQ_HOME (a crashed ``chunkq up``).

    Exits 0 when it is stopped or none was running, 1 while a chunkq process still uses it.
    """
    from schema.embedded import EmbeddedPostgres
    from schema.errors import ChunkqError

    datadir = embedded_datadir()
    server = EmbeddedPostgres(datadir)
    try:
        running = server.is_running()
    except ImportError:  # psutil comes with the wheel; without it none of ours can run
        running = False
    if not running:
        print(f"chunkq: no embedded PostgreSQL is running under {datadir}; nothing to stop")
        return 0
    try:
        stopped = server.stop_unused()
    except ChunkqError as exc:
        say(f"could not stop the embedded PostgreSQL under {datadir}: {exc}")
        return 1
    if not stopped:
        say(
            f"the embedded PostgreSQL under {datadir} is in use by a running chunkq"
            " (up, migrate or prune); stop that one instead (Ctrl-C)"
        )
        return 1
    print(f"chunkq: stopped the embedded PostgreSQL under {datadir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree; each subcommand's handler is stored as ``args.run``."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="chunkq",
        description="Analyse long texts reliably: chunked, queued in PostgreSQL, merged in order.",
        epilog=client.EXIT_HELP,
        formatter_class=raw,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="run the API, workers and (without DATABASE_URL) an embedded PostgreSQL",
        description="Serve the API on 127.0.0.1 and run workers until SIGINT/SIGTERM. Uses"
        " DATABASE_URL if set, else an embedded PostgreSQL with data in $CHUNKQ_HOME"
        " (default ./.chunkq). Exits 0 after a clean stop, 1 if startup fails, 2 for a bad"
        " setting or when the embedded PostgreSQL is not installed.",
    )
    port = os.environ.get("PORT") or "8000"  # a string default goes through `type` too
    for flag, least, default, what in (
        ("--workers", 0, 2, "worker processes (default 2)"),
        ("--concurrency", 1, 8, "chunks in flight per worker (default 8)"),
        ("--port", 0, port, "API port on 127.0.0.1 (default $PORT or 8000; 0: any free one)"),
        ("--web-workers", 1, 2, "gunicorn worker processes (default 2)"),
    ):
        up.add_argument(flag, type=_count(least), default=default, metavar="N", help=what)
    up.set_defaults(run=cmd_up)

    url = os.environ.get("CHUNKQ_URL") or "http://127.0.0.1:8000"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--wait", action="store_true", help="follow the job, print its final JSON")
    common.add_argument("--url", default=url, help=f"the server (default $CHUNKQ_URL or {url})")
    common.add_argument(
        "--interval", type=float, default=0.5, metavar="S", help="seconds between polls (0.5)"
    )

    about = "submit a text for analysis"
    submit = sub.add_parser(
        "submit", parents=[common], help=about, description=about, epilog=client.EXIT_HELP,
        formatter_class=raw,
    )  # fmt: skip
    submit.add_argument("file", metavar="FILE", help="a UTF-8 text file, or - for stdin")
    submit.add_argument(
        "--max-chunk-chars", type=int, default=2000, metavar="N", help="longest chunk (2000)"
    )
    submit.set_defaults(run=client.cmd_submit)

    about = "show a job (with --wait: follow it to the end)"
    status = sub.add_parser(
        "status", parents=[common], help=about, description=about, epilog=client.EXIT_HELP,
        formatter_class=raw,
    )  # fmt: skip
    status.add_argument("job_id", metavar="JOB_ID")
    status.set_defaults(run=client.cmd_status)

    about = "apply database migrations to DATABASE_URL, or to the embedded PostgreSQL"
    sub.add_parser("migrate", help=about, description=about).set_defaults(run=cmd_migrate)

    about = "stop an embedded PostgreSQL left running under $CHUNKQ_HOME (after a crash of up)"
    sub.add_parser("down", help=about, description=about).set_defaults(run=cmd_down)

    about = "delete jobs that finished long ago, with their chunks and attempt log"
    prune = sub.add_parser("prune", help=about, description=about)
    prune.add_argument(
        "--older-than", type=_age, default="7d", metavar="AGE",
        help="how long ago they finished: seconds, or a number with s, m, h or d (default 7d)",
    )  # fmt: skip
    prune.set_defaults(run=cmd_prune)
    return parser


def cmd_prune(args: argparse.Namespace) -> int:
    """Delete finished jobs older than --older-than from DATABASE_URL (or the embedded one)."""
    from schema.db import connect
    from schema.prune import prune

    def run(url: str) -> str:
        with connect(url, autocommit=True) as conn:  # the session limits, as everywhere
            deleted = prune(conn, args.older_than)
        return f"deleted {deleted} finished jobs older than {args.older_than:g} s"

    return with_database("prune", run)


MAX_AGE_S = 36500 * 86400  # a century: older than any row, well inside PostgreSQL's timestamps


def _age(value: str) -> float:
    """An argparse type: seconds, or a number followed by s, m, h or d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (value[:-1], value[-1]) if value[-1:] in units else (value, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an age: {value!r} (try 3600, 90m, 12h or 7d)"
        ) from None
    # float() takes nan, inf and 1e400 (inf); none of them is a time ago PostgreSQL can use.
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"not a finite age: {value!r} (try 3600, 12h or 7d)")
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value!r}")
    if seconds > MAX_AGE_S:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_AGE_S // 86400}d: {value!r}")
    return seconds


def _count(least: int) -> Any:
    """An argparse type: an integer of at least ``least``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
        if number < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}")
        return number

    return parse


def main(argv: list[str] | None = None) -> int:
    """The console script: parse, run one subcommand, return its exit code."""
    # Ctrl-C is how `submit --wait` and `status --wait` are meant to end (exit 130), so the
    # handler is ours to install: Python only sets up KeyboardInterrupt when SIGINT was not
    # ignored at start, and a parent (a CI runner, `cmd &` in a script) may have ignored it.
    # `up` installs its own handlers over this one.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = build_parser().parse_args(argv)
    return int(args.run(args))
