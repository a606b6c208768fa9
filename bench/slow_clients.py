"""``python -m bench.slow_clients``: /healthz latency beside slow clients, the default gunicorn
config against the gthread one it replaced (2 workers x 4 threads), in the same run.

Each config serves the API (2 workers) on a throwaway PostgreSQL. Scenarios:

slow   ``--trickling`` connections sending headers a byte a second and ``--idle`` ones
       sending nothing (reopened whenever the server drops them), while /healthz is asked
       over a fresh connection every 0.1 s for ``--seconds``.
big    the same probing while one client posts ``--big-mb`` MB texts back to back: what a
       request that holds the CPU costs the others.

Latencies of requests that got no answer within ``--timeout`` count as that timeout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import psycopg
from alembic import command

from bench.harness import Server
from schema.migrate import alembic_config
from tests.processes import gunicorn_process
from tests.slowloris import SlowClients

GTHREAD = """\
control_socket_disable = True
timeout = 120
keepalive = 5
worker_class = "gthread"
threads = 4
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_clients", description=__doc__)
    parser.add_argument("--trickling", type=int, default=40)
    parser.add_argument("--idle", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--timeout", type=float, default=3)
    parser.add_argument("--big-mb", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chunkq-bench-slow-") as tmp, Server.embedded() as pg:
        reference = Path(tmp) / "gthread_conf.py"
        reference.write_text(GTHREAD)
        rows = []
        for label, config in (("gthread 2x4 (reference)", str(reference)), ("default", None)):
            url = _database(pg)
            log = Path(tmp) / f"{uuid.uuid4().hex[:6]}.log"
            with gunicorn_process(url, log=log, config=config, ready_s=60) as (base, _master):
                port = int(base.rsplit(":", 1)[1])
                with SlowClients(port, trickling=args.trickling, idle=args.idle) as slow:
                    time.sleep(2)
                    rows.append((label, "slow", _probe(base, args.seconds, args.timeout)))
                    reopened = slow.reopened
                rows.append((label, "big", _with_big_posts(base, args)))
            print(f"  {label}: slow connections reopened after the server dropped them: {reopened}")
    print(
        f"\n/healthz, {args.trickling} trickling + {args.idle} idle connections ('slow'), or"
        f" {args.big_mb} MB posts back to back ('big'):"
    )
    print(
        f"{'config':26} {'scenario':8} {'asked':>5} {'<1s':>5} {'median':>8} {'p90':>8} {'max':>8}"
    )
    for label, scenario, lat in rows:
        lat.sort()
        print(
            f"{label:26} {scenario:8} {len(lat):5d} {sum(x < 1 for x in lat):5d}"
            f" {statistics.median(lat) * 1000:6.0f}ms {lat[int(len(lat) * 0.9)] * 1000:6.0f}ms"
            f" {lat[-1] * 1000:6.0f}ms"
        )
    return 0


def _database(pg: Server) -> str:
    name = f"bench_slow_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = pg.url_for(name)
    command.upgrade(alembic_config(url), "head")
    return url


def _probe(base: str, seconds: float, timeout: float) -> list[float]:
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.monotonic()
        try:
            ok = httpx.get(f"{base}/healthz", timeout=timeout).status_code == 200
        except httpx.TransportError:
            ok = False
        latencies.append(time.monotonic() - start if ok else timeout)
        time.sleep(0.1)
    return latencies


def _with_big_posts(base: str, args: argparse.Namespace) -> list[float]:
    text = ("A sentence of a long document, with some words in it. " * 20 + "\n\n") * (
        args.big_mb * 1_000_000 // 1_120
    )
    done = threading.Event()

    def post() -> None:
        with httpx.Client(timeout=60) as http:
            while not done.is_set():
                http.post(f"{base}/v1/analyze", json={"raw_text": text, "max_chunk_chars": 2000})

    poster = threading.Thread(target=post, daemon=True)
    poster.start()
    try:
        time.sleep(1)
        return _probe(base, args.seconds, args.timeout)
    finally:
        done.set()
        poster.join(60)


if __name__ == "__main__":
    sys.exit(main())
