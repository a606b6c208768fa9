"""The ``chunkq`` console script: the command tree, its options and their help.

Each command imports what it runs only once it runs, so ``--help`` and ``--version`` load
click and this package alone, not Flask, SQLAlchemy, psycopg, httpx or alembic.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from chunkq.console import say
from chunkq.exits import EXIT_HELP, EXIT_INTERRUPTED, EXIT_PIPE_CLOSED, JOBS_EXIT_HELP

# "\b" keeps click from rewrapping the table into one paragraph.
EPILOG = "\b\n" + EXIT_HELP
MAX_AGE_S = 36500 * 86400  # a century: older than any row, well inside PostgreSQL's timestamps


@contextmanager
def _quiet_if_stdout_closes() -> Iterator[None]:
    """Turn a closed stdout (``chunkq status ID | head -c 10``) into exit 141, silently.

    Python's advice for SIGPIPE: point stdout at devnull, so that the flush at exit finds
    somewhere to write and prints no second error.
    """
    try:
        yield
        sys.stdout.flush()  # here, where a closed pipe can still be handled, not at exit
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise click.exceptions.Exit(EXIT_PIPE_CLOSED) from None


class Command(click.Command):
    """A command that takes any unambiguous prefix of a long option (``--work 3``), as the
    argparse command line before it did, so scripts written against that keep working."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        params = self.get_params(ctx)  # --help included
        longs = [opt for param in params for opt in param.opts if opt.startswith("--")]
        return super().parse_args(ctx, _whole_options(ctx, args, longs))


def _whole_options(ctx: click.Context, args: list[str], longs: list[str]) -> list[str]:
    """``args`` with each unambiguous prefix of a long option written out (``--work=3``
    becomes ``--workers=3``); an ambiguous one is a usage error, an unknown one is left for
    click to refuse, and everything after ``--`` is an argument, left alone."""
    whole: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return whole + args[i:]
        name, equals, value = arg.partition("=")
        if name.startswith("--") and name not in longs:
            matches = [opt for opt in longs if opt.startswith(name)]
            if len(matches) > 1:
                raise click.UsageError(f"{name} is ambiguous: {' or '.join(matches)}?", ctx)
            if matches:
                arg = matches[0] + equals + value
        whole.append(arg)
    return whole


class Commands(click.Group):
    """The ``chunkq`` group: every command returns its exit code, and a closed stdout ends any
    of them (help included) quietly. Click's own handling would exit 1 for it."""

    command_class = Command

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _quiet_if_stdout_closes():  # --help and --version print while parsing
            return super().make_context(info_name, args, parent, **extra)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order they are defined: up first, as in the README

    def invoke(self, ctx: click.Context) -> Any:
        with _quiet_if_stdout_closes():
            code = super().invoke(ctx)
        ctx.exit(int(code))


class Age(click.ParamType):
    """An age in seconds: a number, or a number followed by s, m, h or d (``90m``, ``7d``)."""

    name = "age"
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):  # already converted (a default given as a number)
            return value
        text = str(value)
        number, unit = (text[:-1], text[-1]) if text[-1:] in self.units else (text, "s")
        try:
            seconds = float(number) * self.units[unit]
        except ValueError:
            self.fail(f"not an age: {text!r} (try 3600, 90m, 12h or 7d)", param, ctx)
        # float() takes nan, inf and 1e400 (inf); none of them is a time ago PostgreSQL can use.
        if not math.isfinite(seconds):
            self.fail(f"not a finite age: {text!r} (try 3600, 12h or 7d)", param, ctx)
        if seconds < 0:
            self.fail(f"must not be negative: {text!r}", param, ctx)
        if seconds > MAX_AGE_S:
            self.fail(f"must be at most {MAX_AGE_S // 86400}d: {text!r}", param, ctx)
        return seconds


MAX_LIMIT = 2**31 - 1  # the limits are PostgreSQL integers


class Limit(click.ParamType):
    """A key's limit: a positive whole number, or ``none`` for no limit."""

    name = "limit"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if text.lower() == "none":
            return "none"
        try:
            number = int(text)
        except ValueError:
            self.fail(f"not a number: {text!r} (a positive whole number, or none)", param, ctx)
        if not 1 <= number <= MAX_LIMIT:
            self.fail(
                f"must be a whole number from 1 to {MAX_LIMIT}, or none for no limit: {text!r}",
                param,
                ctx,
            )
        return number


class Subcommands(click.Group):
    """A command group inside ``chunkq`` (``keys``): its commands take option prefixes too,
    and are listed in the order they are defined."""

    command_class = Command

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(
    "chunkq",
    cls=Commands,
    # A bare `chunkq` is a usage error (exit 2) on every click version, not help and exit 0.
    no_args_is_help=False,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.version_option(package_name="chunkq", prog_name="chunkq", message="%(prog)s %(version)s")
def cli() -> None:
    """Analyse long texts reliably: chunked, queued in PostgreSQL, merged in order."""


def _count(least: int) -> click.IntRange:
    return click.IntRange(min=least)


@cli.command(short_help="Run the API and workers (and PostgreSQL, unless DATABASE_URL).")
@click.option("--workers", type=_count(0), default=2, metavar="N", help="Worker processes.")
@click.option(
    "--concurrency", type=_count(1), default=8, metavar="N", help="Chunks in flight per worker."
)
@click.option(
    "--port",
    type=_count(0),
    default=8000,
    envvar="PORT",
    show_envvar=True,
    metavar="N",
    help="API port on 127.0.0.1 (0: any free one).",
)
@click.option(
    "--web-workers", type=_count(1), default=2, metavar="N", help="gunicorn worker processes."
)
def up(workers: int, concurrency: int, port: int, web_workers: int) -> int:
    """Serve the API on 127.0.0.1 and run workers until SIGINT/SIGTERM.

    Uses DATABASE_URL if set, else an embedded PostgreSQL with data in $CHUNKQ_HOME (default
    ./.chunkq). Exits 0 after a clean stop, 1 if startup fails, 2 for a bad setting or when
    the embedded PostgreSQL is not installed.
    """
    from chunkq.up import run_up

    return run_up(workers=workers, concurrency=concurrency, port=port, web_workers=web_workers)


def _poll_interval(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """``--interval``: a finite number of seconds (float() also takes nan and inf)."""
    if not math.isfinite(value) or value < 0 or value > 3600:
        raise click.BadParameter(f"must be a number of seconds from 0 to 3600, not {value}")
    return value


def _server_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of every command that talks to the API: which server, with which key."""
    command = click.option(
        "--url",
        default="http://127.0.0.1:8000",
        envvar="CHUNKQ_URL",
        show_envvar=True,
        metavar="URL",
        help="The chunkq server.",
    )(command)
    command = click.option(
        "--api-key",
        envvar="CHUNKQ_API_KEY",
        show_envvar=True,
        metavar="KEY",
        help="The API key to send (Authorization: Bearer). Unset, against a server on this"
        " machine: the key `chunkq up` keeps in $CHUNKQ_HOME/api_key, if there is one.",
    )(command)
    return command


def _follow_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``submit`` and ``status`` share: which server, with which key, whether to
    follow, and what to print."""
    command = click.option(
        "--interval",
        type=float,
        default=0.5,
        metavar="S",
        callback=_poll_interval,
        help="Seconds between polls (0.05 to 3600).",
    )(command)
    command = _server_options(command)
    command = click.option(
        "--summary",
        is_flag=True,
        help="Wait for the job to finish (implies --wait), then print only"
        " analysis_result.summary; when the job has a reduce step, print"
        ' {"summary": ..., "reduce": ...} once the reduce has finished too.',
    )(command)
    command = click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="With --wait, end with the final JSON even when stdout is a terminal.",
    )(command)
    return click.option(
        "--wait",
        is_flag=True,
        help="Follow the job to the end (its reduce step too), then print its final JSON;"
        " on a terminal, a short summary for people instead (unless --json).",
    )(command)


@cli.command(short_help="Submit a text for analysis (--wait: follow it to the end).", epilog=EPILOG)
@click.argument("file", metavar="FILE")
@click.option("--max-chunk-chars", type=int, default=2000, metavar="N", help="The longest chunk.")
@_follow_options
def submit(file: str, max_chunk_chars: int, **follow: Any) -> int:
    """Submit a text for analysis.

    FILE is a UTF-8 text file, or - for stdin. Prints the accepted job as JSON. With --wait,
    shows the job's id and progress on stderr until the job (and its reduce step, if any)
    has ended, then prints the final report as JSON when stdout is a pipe or a file, or a
    short summary for people when stdout is a terminal (--json: the JSON there too). With
    --summary, waits the same way and prints only the summary, as JSON.
    """
    from chunkq.client import submit_file

    # follow: the options of _follow_options, by the names submit_file takes.
    return submit_file(file, max_chunk_chars=max_chunk_chars, **follow)


@cli.command(short_help="Show a job's report (--wait: follow it to the end).", epilog=EPILOG)
@click.argument("job_id", metavar="JOB_ID")
@_follow_options
def status(job_id: str, **follow: Any) -> int:
    """Show a job's report as JSON.

    With --wait, follow it to the end as submit --wait does, and end the same way: the JSON
    on a pipe, a short summary on a terminal (--json: the JSON there too). With --summary,
    follow it, then print only its summary.
    """
    from chunkq.client import show_status

    return show_status(job_id, **follow)


JOB_STATUSES = ("PENDING", "PROCESSING", "COMPLETED", "PARTIAL_SUCCESS", "FAILED", "CANCELLED")
JOBS_EPILOG = "\b\n" + JOBS_EXIT_HELP


def _statuses(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[str]:
    """``--status``: job statuses, repeated or separated by commas, in any case."""
    wanted: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip().upper()
            if name not in JOB_STATUSES:
                raise click.BadParameter(
                    f"{name or 'an empty status'!r} is not one of {', '.join(JOB_STATUSES)}"
                )
            if name not in wanted:
                wanted.append(name)
    return wanted


def _metadata(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    """``--metadata KEY=VALUE``, repeated: every pair must match."""
    pairs: dict[str, str] = {}
    for value in values:
        key, equals, wanted = value.partition("=")
        if not equals or not key:
            raise click.BadParameter(f"not KEY=VALUE: {value!r}")
        pairs[key] = wanted
    return pairs


@cli.command(
    short_help="List your jobs, newest first (--status, --limit, --json).", epilog=JOBS_EPILOG
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    callback=_statuses,
    metavar="STATUS[,STATUS]",
    help="Only jobs with this status; repeat the option or separate statuses by commas.",
)
@click.option(
    "--metadata",
    multiple=True,
    callback=_metadata,
    metavar="KEY=VALUE",
    help="Only jobs whose metadata has KEY set to VALUE; repeat for several (all must match).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=20,
    metavar="N",
    help="The most jobs to list (beyond one page of 100, the next pages are fetched too).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the jobs' reports as one JSON array.")
@_server_options
def jobs(
    statuses: list[str],
    metadata: dict[str, str],
    limit: int,
    as_json: bool,
    api_key: str | None,
    url: str,
) -> int:
    """List your jobs (those of the API key sent), newest first, as a table: id, status,
    progress, chunks, failed, age and metadata. With --json, their reports as one JSON
    array, newest first."""
    from chunkq.jobs import list_jobs

    return list_jobs(
        url=url,
        api_key=api_key,
        statuses=statuses,
        metadata=metadata,
        limit=limit,
        as_json=as_json,
    )


KEYS_EPILOG = """\b
Each command works on DATABASE_URL, or on the embedded PostgreSQL under $CHUNKQ_HOME
(started for it and stopped after, if it was not running).
Exit codes: 0 done, 1 the database failed, 2 bad input or no key with that id."""


@cli.group(
    cls=Subcommands,
    short_help="Make, list and revoke API keys, and set their limits.",
    epilog=KEYS_EPILOG,
)
def keys() -> None:
    """API keys: each is a tenant, with its own jobs, limits and webhook signing secret.

    With CHUNKQ_AUTH on (the default), every /v1 request needs one, as
    'Authorization: Bearer <key>'.
    """


def _limit_options(unset: str) -> Callable[[Callable[..., Any]], Any]:
    """``--max-jobs-in-flight`` and ``--max-queued-chunks``; ``unset`` says what leaving one
    out means."""

    def add(command: Callable[..., Any]) -> Any:
        for name, what in (
            ("--max-queued-chunks", "chunks this key may have queued, over all its jobs"),
            ("--max-jobs-in-flight", "jobs this key may have pending or processing at once"),
        ):
            command = click.option(
                name,
                type=Limit(),
                show_default=False,
                metavar="N|none",
                help=f"Most {what} (none: no limit; {unset}).",
            )(command)
        return command

    return add


@keys.command("create", short_help="Make a key; prints it and its webhook secret once.")
@click.option(
    "--name", default="unnamed", metavar="NAME", help="What the key is for, shown by list."
)
@_limit_options("not given: no limit")
@click.option("--json", "as_json", is_flag=True, help="Print the new key as one JSON object.")
def keys_create(name: str, max_jobs_in_flight: Any, max_queued_chunks: Any, as_json: bool) -> int:
    """Make an API key and print it, its webhook signing secret and its id.

    The key and the secret are shown only this once: the database keeps a hash of the key.
    """
    if not name.strip():
        raise click.BadParameter("must not be empty", param_hint="'--name'")
    from chunkq.keys import run_create

    return run_create(
        name.strip(),
        max_jobs_in_flight=max_jobs_in_flight,
        max_queued_chunks=max_queued_chunks,
        as_json=as_json,
    )


@keys.command("list", short_help="List the keys: id, name, state and limits.")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as a JSON array.")
def keys_list(as_json: bool) -> int:
    """List every key, oldest first: id, name, when it was made, active or revoked, and its
    limits. Never the key itself, which only its creation showed."""
    from chunkq.keys import run_list

    return run_list(as_json=as_json)


@keys.command("revoke", short_help="Revoke a key: refused at once, its jobs still finish.")
@click.argument("key_id", metavar="KEY_ID")
def keys_revoke(key_id: str) -> int:
    """Revoke the key with id KEY_ID (key_..., as `chunkq keys list` shows): requests with it
    are refused from now on; the jobs it made stay and finish."""
    from chunkq.keys import run_revoke

    return run_revoke(key_id)


@keys.command("limits", short_help="Set a key's limits on jobs in flight and queued chunks.")
@click.argument("key_id", metavar="KEY_ID")
@_limit_options("not given: unchanged")
def keys_limits(key_id: str, max_jobs_in_flight: Any, max_queued_chunks: Any) -> int:
    """Set the limits of the key with id KEY_ID. A request past one is refused with 429 until
    some of the key's work has finished."""
    if max_jobs_in_flight is None and max_queued_chunks is None:
        raise click.UsageError("give --max-jobs-in-flight, --max-queued-chunks or both")
    from chunkq.keys import run_limits

    return run_limits(
        key_id, max_jobs_in_flight=max_jobs_in_flight, max_queued_chunks=max_queued_chunks
    )


@cli.command(short_help="Apply the migrations to DATABASE_URL or the embedded database.")
def migrate() -> int:
    """Apply database migrations to DATABASE_URL, or to the embedded PostgreSQL."""
    from chunkq.database import run_migrate

    return run_migrate()


@cli.command(short_help="Stop an embedded PostgreSQL that a crashed `up` left running.")
def down() -> int:
    """Stop an embedded PostgreSQL left running under $CHUNKQ_HOME (after a crash of up).

    Exits 0 when it is stopped or none was running, 1 while a chunkq process still uses it.
    """
    from chunkq.database import run_down

    return run_down()


@cli.command(short_help="Delete jobs that finished long ago, with all their rows.")
@click.option(
    "--older-than",
    type=Age(),
    default="7d",
    metavar="AGE",
    help="How long ago they finished: seconds, or a number with s, m, h or d.",
)
@click.option(
    "--cache-older-than",
    type=Age(),
    default=None,
    metavar="AGE",
    help="Forget result-cache entries stored longer ago than this (default: --older-than).",
)
def prune(older_than: float, cache_older_than: float | None) -> int:
    """Delete jobs that finished long ago, with their chunks and attempt log, and the
    result cache's old entries.

    Uses DATABASE_URL, or the embedded PostgreSQL. A finished job whose reduce step is
    still pending or running is kept.
    """
    from chunkq.database import run_prune

    return run_prune(older_than, older_than if cache_older_than is None else cache_older_than)


def main(argv: list[str] | None = None) -> int:
    """The console script: parse, run one command, return its exit code."""
    # Ctrl-C is how `submit --wait` and `status --wait` are meant to end (exit 130), so the
    # handler is ours to install: Python only sets up KeyboardInterrupt when SIGINT was not
    # ignored at start, and a parent (a CI runner, `cmd &` in a script) may have ignored it.
    # `up` installs its own handlers over this one.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return int(cli.main(args=argv, prog_name="chunkq", standalone_mode=False))
    except click.ClickException as exc:  # a usage error: exit 2, as before
        exc.show()
        return exc.exit_code
    except click.Abort:  # Ctrl-C in a command that does not handle it itself
        say("interrupted")
        return EXIT_INTERRUPTED
