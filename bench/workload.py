"""Workloads: realistic prose, jobs enqueued through schema.queue, and what the DB recorded.

Prose is deterministic (seeded) English-like text with sentences, paragraphs and a little
non-ASCII, so the chunker finds its usual boundaries. Bench-only triggers record, in the
server's clock, when a submit committed, when a job was first claimed and when each chunk
was claimed.
"""

from __future__ import annotations

import functools
import random
import uuid
from typing import Any

import psycopg

from schema import queue
from schema.chunking import split_text

_WORD_TEXT = (
    "the of and to in a is that for it as was with be by on not he this are or his from at"
    " which but have an they you were her she there been one all we their has would when if"
    " so no will more what about up out who them some could into its then two time only"
    " other new these may than first any like now my such make over our even most after also"
    " made many before must through back years where much your way well down should because"
    " each just those people how too little state good very world still own see men work"
    " long here get both between life being under never day same another know while last"
    " might us great old year off come since against go came right used take three himself"
    " few house use during without again place american around however home small found"
    " thought went say part once general high upon school every does got united left number"
    " course war until always away something fact though water less public put think almost"
    " hand enough far took head yet government system better set told nothing night end why"
    " called didn't eyes find going look asked later knew point next program city business"
    " give group toward young days let room president side social given present several"
    " order national possible rather second face per among form important often things"
    " looked early white case john become large big need four within felt children along saw"
    " best church ever least power development light analysis queue worker chunk provider"
    " document summary résumé café naïve façade"
)
_WORDS = _WORD_TEXT.split()
_NAMES = ("Anna", "Bertrand", "Chloé", "Dmitri", "Émile", "Farah", "Gustav", "Hiroshi")


@functools.cache
def _sentences(seed: int = 7, count: int = 4000) -> tuple[str, ...]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 24))]
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), rng.choice(_NAMES))
        if len(words) > 10 and rng.random() < 0.4:
            words[rng.randrange(3, len(words) - 2)] += ","
        if rng.random() < 0.05:
            words.insert(len(words) // 2, "\u2014")
        text = " ".join(words)
        text = text[0].upper() + text[1:] + rng.choice(".........!?")
        if rng.random() < 0.08:
            text = f"\u201c{text}\u201d"
        out.append(text)
    return tuple(out)


@functools.cache
def prose(chars: int, seed: int = 1) -> str:
    """About ``chars`` characters of prose: paragraphs of 2-7 sentences, blank-line separated."""
    rng = random.Random(seed)
    sentences = _sentences()
    paragraphs: list[str] = []
    size = 0
    while size < chars:
        para = " ".join(rng.choice(sentences) for _ in range(rng.randint(2, 7)))
        paragraphs.append(para)
        size += len(para) + 2
    return "\n\n".join(paragraphs)[:chars].rstrip() + "."


@functools.cache
def job_text(
    chunks: int, max_chunk_chars: int = 1000, seed: int = 1
) -> tuple[str, list[tuple[int, int]]]:
    """A text the real chunker splits into exactly ``chunks`` chunks, and its spans. Texts of
    different seeds share no chunk, so the result cache answers none of them."""
    text = prose(chunks * max_chunk_chars, seed)
    spans = split_text(text, max_chunk_chars)
    while len(spans) < chunks:  # the chunker cuts below the limit, so grow until enough
        text = prose(len(text) * 2, seed)
        spans = split_text(text, max_chunk_chars)
    spans = spans[:chunks]
    return text[: spans[-1][1]], spans


def enqueue_jobs(
    conn: psycopg.Connection[Any], jobs: int, per_job: int, *, one_transaction: bool = False
) -> list[uuid.UUID]:
    """Enqueue ``jobs`` jobs of ``per_job`` chunks each via schema.queue.enqueue, each of its
    own text (the result cache answers none of their chunks)."""
    ids = [uuid.uuid4() for _ in range(jobs)]
    if one_transaction:
        with conn.transaction():
            for n, job_id in enumerate(ids):
                text, spans = job_text(per_job, seed=n + 1)
                queue.enqueue(conn, job_id, text, spans, max_chunk_chars=1000)
    else:
        for n, job_id in enumerate(ids):
            text, spans = job_text(per_job, seed=n + 1)
            with conn.transaction():
                queue.enqueue(conn, job_id, text, spans, max_chunk_chars=1000)
    return ids


def enqueue_one_big_job(conn: psycopg.Connection[Any], chunks: int, per_piece: int) -> uuid.UUID:
    """One job of ``chunks`` chunks: per-job texts of different seeds one after the other
    (no chunk repeats another), spans shifted to match."""
    copies = -(-chunks // per_piece)
    pieces = [job_text(per_piece, seed=n + 1) for n in range(copies)]
    text = "".join(piece for piece, _ in pieces)
    spans, shift = [], 0
    for piece, piece_spans in pieces:
        spans += [(start + shift, end + shift) for start, end in piece_spans]
        shift += len(piece)
    spans = spans[:chunks]
    job_id = uuid.uuid4()
    with conn.transaction():
        queue.enqueue(conn, job_id, text[: spans[-1][1]], spans, max_chunk_chars=1000)
    return job_id


# A job's first claim (PENDING -> PROCESSING, stamped in the claiming statement) and the
# commit of its finalization (a deferred constraint trigger fires inside COMMIT, after the
# merge of the results, which a stamp taken at the transaction's start would leave out).
JOB_STARTED_PROBE = """
CREATE TABLE IF NOT EXISTS bench_job_started (job_id uuid, at timestamptz);
CREATE TABLE IF NOT EXISTS bench_job_finished (job_id uuid, at timestamptz);
CREATE OR REPLACE FUNCTION bench_job_started() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_job_started VALUES (NEW.id, clock_timestamp());
    RETURN NEW;
END $$;
CREATE OR REPLACE FUNCTION bench_job_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_job_finished VALUES (NEW.id, clock_timestamp());
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bench_job_started ON jobs;
CREATE TRIGGER bench_job_started AFTER UPDATE OF status ON jobs FOR EACH ROW
    WHEN (OLD.status = 'PENDING' AND NEW.status <> 'PENDING')
    EXECUTE FUNCTION bench_job_started();
DROP TRIGGER IF EXISTS bench_job_finished ON jobs;
CREATE CONSTRAINT TRIGGER bench_job_finished AFTER UPDATE ON jobs
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (OLD.status IN ('PENDING', 'PROCESSING') AND NEW.status NOT IN ('PENDING', 'PROCESSING'))
    EXECUTE FUNCTION bench_job_finished();
"""

# Fires at COMMIT (a deferred constraint trigger runs in the committing transaction just
# before its commit record, and before NOTIFY is delivered), so it stamps the submit's
# commit in the server's clock with no client scheduling in between.
SUBMIT_COMMITTED_PROBE = """
CREATE TABLE IF NOT EXISTS bench_committed (job_id uuid, at timestamptz);
CREATE OR REPLACE FUNCTION bench_committed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_committed VALUES (NEW.id, clock_timestamp());
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bench_committed ON jobs;
CREATE CONSTRAINT TRIGGER bench_committed AFTER INSERT ON jobs
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bench_committed();
"""

CHUNK_CLAIMED_PROBE = """
CREATE TABLE IF NOT EXISTS bench_claims (job_id uuid, seq int, at timestamptz);
CREATE OR REPLACE FUNCTION bench_chunk_claimed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_claims VALUES (NEW.job_id, NEW.seq, clock_timestamp());
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS bench_chunk_claimed ON chunks;
CREATE TRIGGER bench_chunk_claimed AFTER UPDATE OF status ON chunks FOR EACH ROW
    WHEN (OLD.status = 'pending' AND NEW.status = 'running')
    EXECUTE FUNCTION bench_chunk_claimed();
"""


def install(conn: psycopg.Connection[Any], probe: str) -> None:
    """Create a bench-only probe (table, function, trigger) in this database."""
    with conn.transaction():
        conn.execute(probe)


def unfinished_jobs(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        """SELECT count(*) FROM jobs
           WHERE status NOT IN ('COMPLETED', 'PARTIAL_SUCCESS', 'FAILED', 'CANCELLED')"""
    ).fetchone()
    return int(row[0]) if row else 0


def drain_window(conn: psycopg.Connection[Any]) -> tuple[float, int, int]:
    """(seconds from the first claim to the last finalization, completed jobs, chunks done).

    Both ends come from the job probe: the earliest PENDING -> PROCESSING stamp, and the
    latest commit of a finalizing transaction.
    """
    row = conn.execute(
        """SELECT extract(epoch FROM (SELECT max(at) FROM bench_job_finished)
                                     - (SELECT min(at) FROM bench_job_started)),
                  (SELECT count(*) FROM jobs WHERE status = 'COMPLETED'),
                  (SELECT coalesce(sum(chunks_completed), 0) FROM jobs)"""
    ).fetchone()
    assert row is not None
    return float(row[0] or 0.0), int(row[1]), int(row[2])


def reset(conn: psycopg.Connection[Any]) -> None:
    """Empty the chunkq tables (and the probes' tables) between runs in one database."""
    with conn.transaction():
        conn.execute("TRUNCATE jobs, chunks, chunk_attempts, result_cache CASCADE")
        for table in (
            "bench_job_started",
            "bench_job_finished",
            "bench_claims",
            "bench_committed",
        ):
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]:  # type: ignore[index]
                conn.execute(f"TRUNCATE {table}")


def vacuum_analyze(conn: psycopg.Connection[Any], *tables: str) -> None:
    """VACUUM ANALYZE (needs an autocommit connection), so plans and visibility are settled."""
    for table in tables:
        conn.execute(f"VACUUM ANALYZE {table}")
