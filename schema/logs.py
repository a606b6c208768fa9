"""How the API and the workers log: readable text or one JSON object per line
(``CHUNKQ_LOG_FORMAT``), with the job, chunk, attempt and worker a line is about.

Both sides use ``configure`` or ``formatter`` (gunicorn: web/gunicorn_logging.py), so their
lines look alike. The context comes from ``extra={...}`` at a call site, from ``bound`` (a
contextvar, set around a chunk's attempt in the thread that runs it), and from
``set_process_fields`` (what holds for every line of the process, such as a worker's id).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

ENV = "CHUNKQ_LOG_FORMAT"
FORMATS = ("text", "json")
# The context fields, in the order a line shows them.
FIELDS = ("job_id", "chunk", "attempt", "worker_id")
# More a call site may pass in ``extra`` that a JSON line keeps (lifecycle counts and such).
EXTRA_FIELDS = (
    "tenant",
    "chunks",
    "size",
    "status",
    "succeeded",
    "failed",
    "cancelled",
    "duration_s",
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"
# Libraries that log every request at INFO: each provider call and webhook delivery would be
# a line per chunk. They speak only at WARNING unless the level asked for is DEBUG.
CHATTY = ("httpx", "httpcore")

_bound: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "chunkq_log_context", default=None
)
_process_fields: dict[str, Any] = {}


def log_format(environ: Mapping[str, str] | None = None) -> str:
    """``CHUNKQ_LOG_FORMAT`` (default ``text``); a ValueError naming the variable and the
    choices for anything else, so a typo never silently gives the other format."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip().lower()
    if not value:
        return "text"
    if value not in FORMATS:
        raise ValueError(f"{ENV} must be one of {', '.join(FORMATS)}, got {value!r}")
    return value


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Every line logged in this thread (or task) inside the block carries ``fields``."""
    token = _bound.set({**(_bound.get() or {}), **fields})
    try:
        yield
    finally:
        _bound.reset(token)


def set_process_fields(**fields: Any) -> None:
    """Fields every line of this process carries from now on (a worker's ``worker_id``)."""
    _process_fields.update(fields)


class ContextFilter(logging.Filter):
    """Puts the process's and the bound context's fields on each record, unless the call
    site passed them itself (``extra`` wins: it is the most specific)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for fields in (_bound.get() or {}, _process_fields):
            for key, value in fields.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The context and extra fields a record carries, in their display order."""
    out: dict[str, Any] = {}
    for key in (*FIELDS, *EXTRA_FIELDS):
        value = getattr(record, key, None)
        if value is not None:
            out[key] = value
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: an exception goes in its ``exc`` field."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        line.update({k: _plain(v) for k, v in _fields(record).items()})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii=False: a non-ASCII message stays readable; newlines are escaped.
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The readable format, with the job, chunk and attempt a line is about as ``key=value``
    after the message (the job's id only when the message does not name it already). The
    worker's id is left out: the pid in brackets tells the processes apart, and the worker's
    start line names its id."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        shown = [
            f"{key}={value}"
            for key in ("job_id", "chunk", "attempt")
            if (value := getattr(record, key, None)) is not None
            and not (key == "job_id" and f"{value}" in record.message)
        ]
        return f"{text} {' '.join(shown)}" if shown else text


def formatter(fmt: str) -> logging.Formatter:
    """The formatter for ``fmt`` (``text`` or ``json``)."""
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure(
    fmt: str | None = None, *, level: str | int = "INFO", stream: TextIO | None = None
) -> str:
    """Send the root logger's records to ``stream`` (stderr) in ``fmt`` (None: from
    ``CHUNKQ_LOG_FORMAT``, raising ValueError for a bad value); returns the format."""
    fmt = fmt or log_format()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    quiet_chatty(root.level)
    if fmt == "json":
        # Python's warnings and an exception nobody caught (in any thread) become lines of
        # the log too, so a json log never holds a bare multi-line traceback.
        logging.captureWarnings(True)
        sys.excepthook = _uncaught
        threading.excepthook = _uncaught_in_thread
    return fmt


def quiet_chatty(level: int) -> None:
    """Keep the per-request INFO lines of HTTP libraries out of a log at ``level``, unless it
    is DEBUG (where per-chunk detail is what was asked for)."""
    quiet = logging.NOTSET if level <= logging.DEBUG else logging.WARNING
    for name in CHATTY:
        logging.getLogger(name).setLevel(quiet)


def _uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("chunkq").critical("uncaught exception", exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("chunkq").critical(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _plain(value: Any) -> Any:
    """A field's value as JSON holds it: numbers and booleans stay, the rest is text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)
