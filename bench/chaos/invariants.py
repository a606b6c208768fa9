"""The invariants the chaos soak holds the queue to, in SQL: trigger-fed side tables that log
every transition and every commit that left a job broken, and the checks run over the drained
database."""

from __future__ import annotations

from schema.states import CHUNK_TRANSITIONS, JOB_TRANSITIONS

# The transitions the state machine allows; the check of logged transitions skips these.
LEGAL = {
    (old.value, new.value)
    for table in (CHUNK_TRANSITIONS, JOB_TRANSITIONS)
    for old, news in table.items()
    for new in news
}

# Trigger-fed side tables: every chunk and job transition, and every commit that left a job
# breaking an invariant (deferred constraint triggers run at COMMIT, seeing what it left).
PROBES = """
CREATE SCHEMA chaos;
CREATE TABLE chaos.chunk_log (id bigserial PRIMARY KEY, job_id uuid, seq int, old_status text,
    new_status text, attempts int, worker_id text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE chaos.job_log (id bigserial PRIMARY KEY, job_id uuid, old_status text,
    new_status text, result_written bool, reduce_only bool,
    at timestamptz DEFAULT clock_timestamp());
CREATE TABLE chaos.broken (id bigserial PRIMARY KEY, job_id uuid, detail text);
CREATE FUNCTION chaos.log_chunk() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    INSERT INTO chaos.chunk_log (job_id, seq, old_status, new_status, attempts, worker_id)
    VALUES (NEW.job_id, NEW.seq, OLD.status, NEW.status, NEW.attempts,
            coalesce(NEW.worker_id, OLD.worker_id));
    RETURN NULL; END $$;
CREATE FUNCTION chaos.log_job() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    INSERT INTO chaos.job_log (job_id, old_status, new_status, result_written, reduce_only)
    VALUES (NEW.id, OLD.status, NEW.status,
            OLD.analysis_result IS DISTINCT FROM NEW.analysis_result,
            OLD.analysis_result IS NOT NULL
            AND OLD.analysis_result - 'reduce' IS NOT DISTINCT FROM NEW.analysis_result - 'reduce');
    RETURN NULL; END $$;
CREATE FUNCTION chaos.check_job() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE jid uuid; r record; BEGIN
    IF TG_TABLE_NAME = 'chunks' THEN jid := NEW.job_id; ELSE jid := NEW.id; END IF;
    SELECT j.id, j.status, j.chunks_completed AS done, j.chunks_failed AS failed,
           count(*) FILTER (WHERE c.status = 'succeeded') AS n_ok,
           count(*) FILTER (WHERE c.status = 'failed') AS n_failed,
           count(*) FILTER (WHERE c.status IN ('pending', 'running')) AS n_open
      INTO r FROM public.jobs j JOIN public.chunks c ON c.job_id = j.id
     WHERE j.id = jid GROUP BY j.id;
    IF r.done <> r.n_ok OR r.failed <> r.n_failed
       OR (r.status NOT IN ('PENDING', 'PROCESSING') AND r.n_open > 0) THEN
        INSERT INTO chaos.broken (job_id, detail) VALUES (r.id, format('txid %s (%s update) '
            'left %s, completed %s vs %s succeeded rows, failed %s vs %s, %s pending/running',
            txid_current(), TG_TABLE_NAME, r.status, r.done, r.n_ok, r.failed, r.n_failed,
            r.n_open));
    END IF;
    RETURN NULL; END $$;
CREATE TRIGGER chaos_log AFTER UPDATE ON public.chunks FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.result IS DISTINCT FROM NEW.result)
    EXECUTE FUNCTION chaos.log_chunk();
CREATE TRIGGER chaos_log AFTER UPDATE ON public.jobs FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.analysis_result IS DISTINCT FROM NEW.analysis_result)
    EXECUTE FUNCTION chaos.log_job();
CREATE CONSTRAINT TRIGGER chaos_check AFTER UPDATE ON public.chunks
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION chaos.check_job();
CREATE CONSTRAINT TRIGGER chaos_check AFTER UPDATE ON public.jobs
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.chunks_completed <> NEW.chunks_completed
          OR OLD.chunks_failed <> NEW.chunks_failed)
    EXECUTE FUNCTION chaos.check_job();
"""

_SUCCEEDED = "count(*) FILTER (WHERE c.status = 'succeeded')"
_FAILED = "count(*) FILTER (WHERE c.status = 'failed')"
_FINALIZED = "count(l.id) FILTER (WHERE l.new_status = ANY(%(t)s) AND l.old_status <> l.new_status)"
# Writes of jobs.analysis_result other than a reduce step's (which only sets its "reduce"
# key, after the job is terminal): the finalize or the cancel, once, in the same UPDATE
# that made the job terminal.
_WRITTEN = "count(l.id) FILTER (WHERE l.result_written AND NOT l.reduce_only)"
_WRITTEN_AT_END = (
    "count(l.id) FILTER (WHERE l.result_written AND NOT l.reduce_only"
    " AND l.new_status = ANY(%(t)s) AND l.old_status <> ALL(%(t)s))"
)
# What is wrong, and SQL that returns one row per offence, run over the drained database.
CHECKS = [
    (
        "counters differ from row counts (job, completed, failed, succeeded rows, failed rows)",
        f"""SELECT j.id, j.chunks_completed, j.chunks_failed, {_SUCCEEDED}, {_FAILED}
            FROM jobs j JOIN chunks c ON c.job_id = j.id GROUP BY j.id
            HAVING j.chunks_completed <> {_SUCCEEDED} OR j.chunks_failed <> {_FAILED}""",
    ),
    (
        "terminal job with a pending/running chunk (job, status, seq, chunk status)",
        """SELECT j.id, j.status, c.seq, c.status FROM jobs j JOIN chunks c ON c.job_id = j.id
           WHERE j.status = ANY(%(t)s) AND c.status IN ('pending', 'running')""",
    ),
    (
        "job stuck non-terminal after the drain (job, status, completed, failed, total)",
        """SELECT id, status, chunks_completed, chunks_failed, chunks_total FROM jobs
           WHERE status <> ALL(%(t)s)""",
    ),
    (
        "status does not match the counts (job, status, total, completed, failed)",
        """SELECT id, status, chunks_total, chunks_completed, chunks_failed FROM jobs
           WHERE status = ANY(%(t)s) AND status <> CASE
               WHEN chunks_completed + chunks_failed <> chunks_total THEN 'INCOMPLETE'
               WHEN chunks_failed = 0 THEN 'COMPLETED' WHEN chunks_completed = 0 THEN 'FAILED'
               ELSE 'PARTIAL_SUCCESS' END
              OR finished_at IS NULL OR analysis_result IS NULL""",
    ),
    (
        "result not recorded exactly once (job, seq, status, times it became succeeded)",
        """SELECT c.job_id, c.seq, c.status, count(l.id) FROM chunks c
           LEFT JOIN chaos.chunk_log l
                  ON (l.job_id, l.seq, l.new_status) = (c.job_id, c.seq, 'succeeded')
           GROUP BY c.job_id, c.seq, c.status
           HAVING count(l.id) <> (c.status = 'succeeded')::int""",
    ),
    (
        "job not finalized exactly once (job, terminal transitions, analysis_result writes"
        " other than a reduce step's, of them in the terminal transition)",
        f"""SELECT j.id, {_FINALIZED}, {_WRITTEN}, {_WRITTEN_AT_END}
            FROM jobs j LEFT JOIN chaos.job_log l ON l.job_id = j.id GROUP BY j.id
            HAVING {_FINALIZED} <> 1 OR {_WRITTEN} <> 1 OR {_WRITTEN_AT_END} <> 1""",
    ),
    (
        "stored analysis_result holds chunk entries, not only the job's own part (job, keys)",
        """SELECT id, ARRAY(SELECT jsonb_object_keys(analysis_result)) FROM jobs
           WHERE jsonb_typeof(analysis_result) <> 'object' OR analysis_result ? 'chunks'""",
    ),
    (
        "a commit left a job breaking an invariant (job, what the commit left)",
        "SELECT job_id, detail FROM chaos.broken ORDER BY id",
    ),
    (
        "illegal status transition (kind, from, to, times)",
        """SELECT 'chunk', old_status, new_status, count(*) FROM chaos.chunk_log
           WHERE old_status <> new_status GROUP BY 2, 3
           UNION ALL SELECT 'job', old_status, new_status, count(*) FROM chaos.job_log
           WHERE old_status <> new_status GROUP BY 2, 3""",
    ),
    (
        "final chunk without its result or error, or attempts out of range (job, seq, ...)",
        """SELECT job_id, seq, status, attempts FROM chunks
           WHERE (status = 'succeeded' AND (result IS NULL OR error IS NOT NULL))
              OR (status = 'failed' AND error IS NULL) OR attempts NOT BETWEEN 1 AND %(max)s""",
    ),
    (
        "failed attempts not logged once each (job, seq, status, attempts, attempts logged)",
        """SELECT c.job_id, c.seq, c.status, c.attempts, array_agg(a.attempt ORDER BY a.attempt)
           FROM chunks c LEFT JOIN chunk_attempts a ON (a.job_id, a.seq) = (c.job_id, c.seq)
           GROUP BY c.job_id, c.seq, c.status, c.attempts
           HAVING array_remove(array_agg(a.attempt ORDER BY a.attempt), NULL) <> ARRAY(
               SELECT generate_series(1, c.attempts - (c.status = 'succeeded')::int))""",
    ),
]
