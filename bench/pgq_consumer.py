"""One pgqueuer consumer process for bench.pgq: a QueueManager with a no-op entrypoint.

``DATABASE_URL=... python -m bench.pgq_consumer BATCH_SIZE`` drains the queue in drain mode
(it exits once the queue is empty), or stops cleanly on SIGTERM. It imports only pgqueuer,
asyncpg and uvloop, so its start-up is pgqueuer's own, not the benchmark harness's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import asyncpg
import uvloop
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode

ENTRYPOINT = "noop"


async def consume(url: str, batch_size: int) -> None:
    """Run one QueueManager on its own asyncpg connection until drained or SIGTERM."""
    conn = await asyncpg.connect(url)
    try:
        manager = QueueManager(Queries(AsyncpgDriver(conn)))

        @manager.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            return None

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, manager.shutdown.set)
        await manager.run(
            batch_size=batch_size,
            mode=QueueExecutionMode.drain,
            # Folding the log into statistics is a chore for every 30 s; bench.pgq reads the log.
            log_aggregation_interval=timedelta(0),
        )
    finally:
        await conn.close()


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: DATABASE_URL=... python -m bench.pgq_consumer BATCH_SIZE", file=sys.stderr)
        return 2
    uvloop.run(consume(os.environ["DATABASE_URL"], int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
