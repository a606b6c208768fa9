"""``python -m workerd``: read settings, install signal handlers, run one worker."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from types import FrameType

log = logging.getLogger("workerd")

# A SIGTERM that arrives while the imports below are still loading must still mean a clean
# stop (exit 0), not death by signal: note it now, act on it once the worker exists.
_early_signals: list[int] = []


def _note_signal(signum: int, _frame: FrameType | None) -> None:
    _early_signals.append(signum)


signal.signal(signal.SIGTERM, _note_signal)
signal.signal(signal.SIGINT, _note_signal)

from schema import logs  # noqa: E402
from schema.db import resolve_url  # noqa: E402
from schema.errors import DatabaseUrlMissing  # noqa: E402
from workerd import loop  # noqa: E402
from workerd.database import connectors  # noqa: E402
from workerd.listen import listener  # noqa: E402
from workerd.metrics import Metrics, serve  # noqa: E402
from workerd.providers import provider_from_settings  # noqa: E402
from workerd.settings import Settings  # noqa: E402
from workerd.signals import stop_on_signals  # noqa: E402
from workerd.worker import Worker, make_worker_id  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workerd", description=__doc__)
    parser.add_argument(
        "--concurrency", type=int, default=8, help="chunks in flight in this process (default 8)"
    )
    parser.add_argument(
        "--burst", action="store_true", help="exit 0 once nothing is due or running"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve this worker's Prometheus metrics on this port (CHUNKQ_METRICS_PORT)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    fmt = None
    try:
        fmt = logs.configure(level=args.log_level)
        settings = Settings.from_env()
        if args.metrics_port is not None:
            settings = dataclasses.replace(settings, metrics_port=args.metrics_port)
        provider = provider_from_settings(settings)
    except ValueError as exc:
        return _refuse(str(exc), fmt)
    if args.concurrency < 1:
        return _refuse("--concurrency must be at least 1", fmt)
    # Named before the first line it logs, so that every line carries it.
    worker_id = make_worker_id()
    logs.set_process_fields(worker_id=worker_id)
    check = getattr(provider, "check_server", None)
    for warning in check() if callable(check) else []:
        log.warning("%s", warning)
    try:
        url = settings.database_url or resolve_url()
    except DatabaseUrlMissing as exc:
        return _refuse(str(exc), fmt)
    metrics = Metrics()
    if settings.metrics_port is not None:
        where = f"{settings.metrics_host}:{settings.metrics_port}"
        try:
            serve(metrics, settings.metrics_port, settings.metrics_host)
        except OSError as exc:
            why = f"cannot serve metrics on {where} (CHUNKQ_METRICS_PORT, --metrics-port)"
            return _refuse(f"{why}: {exc.strerror or exc}", fmt)
        log.info("serving metrics on http://%s/metrics", where)
    work, listen = connectors(settings, url)
    worker = Worker(
        settings,
        provider,
        work,
        concurrency=args.concurrency,
        metrics=metrics,
        worker_id=worker_id,
    )

    on_signal = stop_on_signals(worker)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if _early_signals:
        on_signal(_early_signals[0], None)
    log.info(
        "worker %s started: provider=%s concurrency=%d",
        worker.worker_id,
        settings.provider,
        args.concurrency,
    )
    return loop.run(worker, burst=args.burst, listen=listener(listen))


def _refuse(message: str, fmt: str | None) -> int:
    """Exit 2 with ``message`` on stderr: with json logs a line of the log like every
    other, else (text, or before the format is known) a plain line for people."""
    if fmt == "json":
        log.error("%s", message)
    else:
        print(f"workerd: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
