"""Memory: peak RSS of a worker draining at concurrency 64, and of a gunicorn worker taking
a 10 MB text.

workerd: ``python -m workerd --concurrency 64`` is started idle (its RSS then is noted),
then 6,400 chunks (--quick 1,920) are enqueued with the simulated provider at 50 ms; RSS of
the process and its children is sampled with psutil every 10 ms until every job is
terminal. gunicorn (2 workers): the RSS of each worker process is sampled every 10 ms
while three 10 MB texts (--quick: one) are POSTed, and the highest is reported. Where /proc
has it, the kernel's own high-water mark (VmHWM) is recorded too. Reference: RSS of a bare
``python -c "import psycopg, flask, sqlalchemy"``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import httpx
import psutil
import psycopg

from bench import procs, workload
from bench.figures import Figure
from bench.harness import BenchError, Context, wait_until
from tests.processes import ROOT

NAME = "memory"
MB = 1024 * 1024


class _Sampler:
    """Samples ``measure()`` every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, measure: Callable[[], int], interval: float = 0.01) -> None:
        self.peak = 0
        self._measure = measure
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._measure())
            self._stop.wait(self._interval)


def _bare_python_rss() -> int:
    code = "import sys, psycopg, flask, sqlalchemy; print('ready', flush=True); sys.stdin.read()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise BenchError("the bare python process did not start")
        time.sleep(0.2)
        return psutil.Process(proc.pid).memory_info().rss
    finally:
        if proc.stdin:
            proc.stdin.close()
        procs.stop(proc, timeout=10)


def _workerd(ctx: Context) -> tuple[int, int, int | None]:
    """(idle RSS, peak RSS while draining, VmHWM) of one worker at concurrency 64."""
    chunks = ctx.sizes.memory_chunks
    with ctx.database("memory") as url, psycopg.connect(url, autocommit=True) as conn:
        label = "memory-workerd"
        with procs.workers(
            url, ctx.tmp, label, 1, "--concurrency", "64", CHUNKQ_SIM_LATENCY_MS="50"
        ) as workers:
            pid = workers[0].pid
            procs.wait_listening(conn, 1)
            time.sleep(0.5)
            idle = procs.tree_rss(pid)
            hwm: int | None = None
            with _Sampler(lambda: procs.tree_rss(pid)) as sampler:
                workload.enqueue_jobs(conn, chunks // 64, 64, one_transaction=True)

                def drained() -> bool:
                    nonlocal hwm
                    procs.check_exit(workers, ctx.tmp, label)
                    hwm = procs.high_water_mark(pid) or hwm
                    return workload.unfinished_jobs(conn) == 0

                wait_until(drained, 300, "the memory drain", interval=0.05)
            return idle, sampler.peak, hwm


def _gunicorn(ctx: Context) -> tuple[int, int, int | None]:
    """(RSS of a worker before, peak RSS of any worker during 10 MB POSTs, highest VmHWM)."""
    text = workload.prose(10_000_000, seed=10_000_000)
    body = json.dumps({"raw_text": text, "max_chunk_chars": 1000}).encode()
    with (
        ctx.database("memory_web") as url,
        procs.gunicorn(url, ctx.tmp) as (base, master),
        httpx.Client(base_url=base, timeout=300) as http,
    ):
        pids = [child.pid for child in psutil.Process(master.pid).children()]
        before = max(procs.tree_rss(pid) for pid in pids)
        with _Sampler(lambda: max(procs.tree_rss(pid) for pid in pids)) as sampler:
            for _ in range(1 if ctx.quick else 3):
                response = http.post(
                    "/v1/analyze", content=body, headers={"Content-Type": "application/json"}
                )
                if response.status_code != 202:
                    raise BenchError(f"10 MB POST answered {response.status_code}")
        marks = [procs.high_water_mark(pid) for pid in pids]
        hwm = max((m for m in marks if m is not None), default=None)
        return before, sampler.peak, hwm


def run(ctx: Context) -> list[Figure]:
    bare = _bare_python_rss()
    w_idle, w_peak, w_hwm = _workerd(ctx)
    g_before, g_peak, g_hwm = _gunicorn(ctx)
    ctx.say(
        f"memory: bare {bare / MB:.1f} MB; workerd idle {w_idle / MB:.1f} MB, peak"
        f" {w_peak / MB:.1f} MB (VmHWM {(w_hwm or 0) / MB:.1f}); gunicorn worker before"
        f" {g_before / MB:.1f} MB, peak {g_peak / MB:.1f} MB (VmHWM {(g_hwm or 0) / MB:.1f})"
    )
    ref = "bare python+psycopg+flask+sqlalchemy"
    return [
        Figure(NAME, "workerd --concurrency 64, idle", w_idle / MB, "MB", ref, bare / MB),
        Figure(
            NAME,
            "workerd --concurrency 64, peak while draining @50ms",
            w_peak / MB,
            "MB",
            ref,
            bare / MB,
            value_max=150,
            note=f"VmHWM {w_hwm / MB:.1f} MB" if w_hwm else "",
            extra={"vmhwm_mb": w_hwm / MB if w_hwm else None},
        ),
        Figure(NAME, "gunicorn worker, before 10 MB POST", g_before / MB, "MB", ref, bare / MB),
        Figure(
            NAME,
            "gunicorn worker, peak during 10 MB POST",
            g_peak / MB,
            "MB",
            ref,
            bare / MB,
            note=f"VmHWM {g_hwm / MB:.1f} MB" if g_hwm else "",
            extra={"vmhwm_mb": g_hwm / MB if g_hwm else None},
        ),
    ]
