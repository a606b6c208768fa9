"""The chaos soak's audit of the drained database: every invariant in SQL, each job against
the text that was submitted and its GET, what the faults were for, and the logs."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.chaos.invariants import CHECKS, LEGAL
from bench.chaos.report import Tally
from bench.chaos.settings import LEASE_S, MAX_ATTEMPTS, PROVIDER, TERMINAL
from bench.chaos.texts import MARKED, MARKER
from bench.chaos.traffic import Submitted
from bench.heldlock import HeldLock
from schema import reads
from workerd.providers.builtin import count_sentences, count_words

RESET_NOISE = "Exception during reset or similar"
WEB_FAILURES = ("unhandled error", "WORKER TIMEOUT", "Exception in worker", "failed to boot")


def made_from(provider: str | None, piece: str, result: dict[str, Any] | None) -> bool:
    """Whether ``result`` is what ``provider`` makes of ``piece``, judged by the fields that
    depend on the text alone (a result recorded without its provider is not)."""
    result = result or {}
    if provider == "simulated":
        digest = hashlib.sha256(piece.encode()).hexdigest()[:16]
        return (result.get("digest"), result.get("chars")) == (digest, len(piece))
    if provider == "builtin":
        counts = (len(piece), count_words(piece), count_sentences(piece))
        fields = (result.get("chars"), result.get("words"), result.get("sentences"))
        return fields == counts and isinstance(result.get("keywords"), list)
    return False


def summary_problems(summary: dict[str, Any], groups: dict[str | None, list[int]]) -> list[str]:
    """A job's summary against the lengths of its succeeded chunks, grouped by the provider
    that produced each (in order of first appearance): one provider's merge, or, when there
    are several, ``{"providers": [{"provider", "chunks", "summary"}, ...]}``; never an error."""
    if "error" in summary:
        return [f"the merge failed: {summary['error']}"]
    if len(groups) <= 1:
        lengths = next(iter(groups.values()), [])
        if (summary.get("chunks"), summary.get("chars")) != (len(lengths), sum(lengths)):
            return [f"summary {summary} does not add up its {len(lengths)} succeeded chunks"]
        return []
    want = [(name, len(ls), len(ls), sum(ls)) for name, ls in groups.items()]
    listed = summary.get("providers")
    got = [
        (p.get("provider"), p.get("chunks"), p.get("summary", {}).get("chunks"),
         p.get("summary", {}).get("chars"))
        for p in (listed if isinstance(listed, list) else [])
        if isinstance(p, dict) and isinstance(p.get("summary", {}), dict)
    ]  # fmt: skip
    if got != want:
        return [f"summary {str(summary)[:300]} is not the per-provider merge {want}"]
    return []


def dropped_after(log: str, resumed: datetime) -> int:
    """Fenced drops a worker logged in the leases' time after it was resumed (its log lines
    start with a local ``asctime``, as ``datetime.now()`` is)."""
    n = 0
    for line in log.splitlines():
        if "result dropped" in line:
            with contextlib.suppress(ValueError):
                at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                n += resumed - timedelta(seconds=1) <= at <= resumed + timedelta(seconds=LEASE_S)
    return n


class Audit:
    """The checks of one drained run, reporting to ``tally``."""

    def __init__(
        self,
        args: argparse.Namespace,
        tally: Tally,
        url: str,
        base: str,
        jobs: dict[str, Submitted],
        held: HeldLock | None,
        resumed: list[tuple[str, datetime]],
        logs: Path,
    ) -> None:
        self.args = args
        self.tally = tally
        self.url = url  # the database
        self.base = base  # the API
        self.jobs = jobs  # acknowledged with a 202
        self.held = held
        self.resumed = resumed  # (worker log, when) after long pauses
        self.logs = logs

    def check(self) -> None:
        """Every SQL check over the whole database, then each job against its text and GET."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            for what, sql in CHECKS:
                for row in conn.execute(sql, {"t": TERMINAL, "max": MAX_ATTEMPTS}):
                    if what.startswith("illegal") and tuple(row[1:3]) in LEGAL:
                        continue
                    self.tally.violate(f"{what}: {tuple(map(str, row))}")
            found = {str(row[0]) for row in conn.execute("SELECT id FROM jobs")}
            for job_id in sorted(set(self.jobs) - found):
                self.tally.violate(
                    f"job {job_id} was acknowledged with a 202 but is not in the database"
                )
            unacknowledged = len(found - set(self.jobs))
            self.tally.count(
                "jobs created without a 202 (answer lost to an outage)", unacknowledged
            )
            with httpx.Client(base_url=self.base, timeout=30) as http:
                for job_id in sorted(found & set(self.jobs)):
                    for problem in self.check_job(conn, http, job_id, self.jobs[job_id]):
                        self.tally.violate(f"job {job_id}: {problem}")
            self.figures_from(conn)
            self.check_faults(conn)

    def check_job(
        self, conn: psycopg.Connection[Any], http: httpx.Client, job_id: str, job: Submitted
    ) -> list[str]:
        """Problems of one job: its analysis_result (the stored summary with the chunk
        entries built from the chunk rows, as a report assembles it) against the submitted
        text and its chunk rows, and the GET report against the database."""
        found = conn.execute(
            "SELECT status, chunks_total, chunks_completed, chunks_failed FROM jobs WHERE id = %s",
            (job_id,),
        ).fetchone()
        assert found is not None
        analysis = reads.analysis_result(conn, uuid.UUID(job_id))
        row = (*found, analysis)
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT seq, status, text, result, error, provider FROM chunks WHERE job_id = %s",
                (job_id,),
            )
        }
        entries = (analysis or {}).get("chunks", [])
        pieces = [job.text[e["start"] : e["end"]] for e in entries]
        problems = []
        if row[1] != job.total or [e["index"] for e in entries] != list(range(job.total)):
            problems.append(f"{len(entries)} result entries, not 0..{job.total - 1} in order")
        if "".join(pieces) != job.text or any(
            a["end"] != b["start"] for a, b in itertools.pairwise(entries)
        ):
            problems.append("the result's chunks do not tile the submitted text")
        groups: dict[str | None, list[int]] = {}  # succeeded chunks' lengths by provider
        for e, piece in zip(entries, pieces, strict=True):
            status, text, result, error, provider = rows.get(e["index"], (None,) * 5)
            if status == "succeeded":
                groups.setdefault(provider, []).append(len(piece))
            if (e["status"], piece) != (status, text):
                span = f"text[{e['start']}:{e['end']}]"
                same = "the same text" if piece == text else "other text"
                problems.append(f"chunk {e['index']}: {e['status']} {span}; row: {status}, {same}")
            elif status == "succeeded" and (
                e.get("result") != result or not made_from(provider, piece, result)
            ):
                problems.append(
                    f"chunk {e['index']}: result {e.get('result')} not {provider}'s of its text"
                )
            elif status == "failed" and (e.get("error") or None, "result" in e) != (error, False):
                problems.append(f"chunk {e['index']}: error {e.get('error')!r} vs {error!r}")
            # Only the simulated provider fails the marker; builtin analyses it like any text.
            if MARKED.search(piece) and status != "failed" and provider != "builtin":
                problems.append(f"chunk {e['index']} holds {MARKER} yet is {status} ({provider})")
            if status == "failed" and MARKED.search(piece):
                self.tally.count("  of them holding the marker")
        problems += summary_problems((analysis or {}).get("summary", {}), groups)
        body = http.get(f"/v1/analyze/{job_id}").json()
        keys = ("status", "chunks_total", "chunks_completed", "chunks_failed", "analysis_result")
        errors = [
            tuple(e[k] for k in ("chunk_index", "attempt", "error_class", "error"))
            for e in body.get("errors", [])
        ]
        logged = conn.execute(
            "SELECT seq, attempt, error_class, error FROM chunk_attempts WHERE job_id = %s"
            " ORDER BY seq, attempt, id",
            (job_id,),
        ).fetchall()
        if (
            tuple(body.get(k) for k in keys) != row
            or errors != logged
            or body.get("percent") != round(100.0 * (row[2] + row[3]) / row[1], 2)
        ):
            problems.append(f"GET disagrees with the database: {str(body)[:300]}")
        return problems

    def figures_from(self, conn: psycopg.Connection[Any]) -> None:
        for status, k in conn.execute("SELECT status, count(*) FROM jobs GROUP BY 1"):
            self.tally.count(f"jobs {status}", k)
        for name, sql in (
            ("jobs in the database", "jobs"),
            ("chunks", "chunks"),
            ("chunks failed for good", "chunks WHERE status = 'failed'"),
            ("failed attempts logged", "chunk_attempts"),
            ("  of them lost workers (rescued)", "chunk_attempts WHERE error_class = 'WorkerLost'"),
            ("chunk transitions logged", "chaos.chunk_log"),
            (
                "jobs with results from two providers",
                """(SELECT job_id FROM chunks WHERE status = 'succeeded' GROUP BY job_id
                    HAVING count(DISTINCT provider) > 1) AS mixed""",
            ),
        ):
            self.tally.count(name, conn.execute(f"SELECT count(*) FROM {sql}").fetchone()[0])  # type: ignore[index]
        for provider, k in conn.execute(
            "SELECT provider, count(*) FROM chunks WHERE status = 'succeeded' GROUP BY 1"
        ):
            self.tally.count(f"chunks succeeded by {provider}", k)

    def check_faults(self, conn: psycopg.Connection[Any]) -> None:
        """The faults did what they are for: the switch left jobs with results from two
        providers, and the held job ended terminal after its row was released."""
        if self.args.switch_to and not self.tally.n["jobs with results from two providers"]:
            self.tally.violate(f"no job got results from both {PROVIDER} and {self.args.switch_to}")
        held = self.held
        if held is None or held.job_id is None or held.held is None:
            return
        # The job_log's clock is the UPDATE's own; finished_at is its transaction's start,
        # which may precede the release while that transaction waited for CPU.
        row = conn.execute(
            """SELECT j.status, min(l.at) FILTER (WHERE l.new_status = ANY(%(t)s)),
                      (SELECT min(at) FROM chaos.chunk_log WHERE job_id = j.id
                          AND new_status = 'succeeded' AND at >= %(end)s)
               FROM jobs j LEFT JOIN chaos.job_log l ON l.job_id = j.id
               WHERE j.id = %(id)s GROUP BY j.id, j.status""",
            {"id": held.job_id, "t": TERMINAL, "end": held.held.end},
        ).fetchone()
        assert row is not None
        if row[2] is not None:
            held.recorded_after_s = (row[2] - held.held.end).total_seconds()
        if row[0] not in TERMINAL or row[1] is None or row[1] < held.held.end:
            self.tally.violate(
                f"held job {held.job_id} is {row[0]}, made terminal at {row[1]}; its row was "
                f"held until {held.held.end}"
            )
        else:
            held.terminal_after_s = (row[1] - held.held.end).total_seconds()

    def scan_logs(self) -> None:
        """Count fenced drops. A worker's traceback, the web's 500 path ("unhandled error") or
        a gunicorn worker failure is a bug; SQLAlchemy's traceback for a connection that died
        mid-request and is dropped on its way back to the pool is counted, not failed."""
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace")
            self.tally.count("late results dropped by the fence", text.count("result dropped"))
            for name, resumed in self.resumed:
                if name == log.name:
                    late = dropped_after(text, resumed)
                    self.tally.count("  late results they had dropped by the fence", late)
            self.tally.count("pool-reset tracebacks in gunicorn.log", text.count(RESET_NOISE))
            bad = ("Traceback",) if log.name.startswith("worker") else WEB_FAILURES
            for word in bad:
                if (at := text.find(word)) >= 0:
                    excerpt = text[max(0, at - 300) : at + 1500]
                    self.tally.violate(f"{log.name} logged {word!r}:\n{excerpt}")
