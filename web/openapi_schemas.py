"""The JSON Schema components of the OpenAPI document (web/openapi.py): every body the API
takes or gives, each named once and referenced wherever a route uses it."""

from __future__ import annotations

from typing import Any

from schema.models import MAX_PRIORITY, MIN_PRIORITY
from schema.states import ChunkStatus, JobStatus, ReduceStatus
from web.validation import MAX_METADATA_CHARS, MAX_METADATA_KEYS

JOB_STATUSES = [s.value for s in JobStatus]
CHUNK_STATUSES = [s.value for s in ChunkStatus]
REDUCE_STATUSES = [s.value for s in ReduceStatus]
# A chunk in a terminal job's analysis_result: pending and running ones were cancelled.
FINAL_CHUNK_STATUSES = [s.value for s in ChunkStatus if s.value not in ("pending", "running")]
WEBHOOK_STATUSES = ["pending", "running", "delivered", "failed"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [schema, {"type": "null"}]}


def obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


INT = {"type": "integer"}
PRIORITY = {
    "type": "integer",
    "minimum": MIN_PRIORITY,
    "maximum": MAX_PRIORITY,
    "default": 0,
    "description": "Orders the job among its tenant's jobs: higher runs first. Other"
    " tenants' jobs are not affected; every tenant gets its share of the workers.",
}
COUNT = {"type": "integer", "minimum": 0}
STRING = {"type": "string"}
TIME = {"type": "string", "format": "date-time"}


def schemas(cfg: Any) -> dict[str, Any]:
    """The JSON Schema components, reused across routes."""
    text = {
        "type": "string",
        "minLength": 1,
        "description": "The text to analyse: some non-whitespace text, no NUL character"
        " (U+0000) and no lone surrogate (PostgreSQL cannot store them).",
    }
    job_summary_fields = {
        "job_id": {"type": "string", "format": "uuid"},
        "status": ref("JobStatus"),
        "percent": {
            "type": "number",
            "minimum": 0,
            "maximum": 100,
            "description": "100 x (chunks_completed + chunks_failed) / chunks_total; never"
            " goes down.",
        },
        "progress_pct": {"type": "number", "minimum": 0, "maximum": 100},
        "chunks_total": {"type": "integer", "minimum": 1},
        "total_chunks": {"type": "integer", "minimum": 1},
        "chunks_completed": COUNT,
        "chunks_failed": COUNT,
        "errors": {"type": "array", "items": ref("AttemptError")},
        "chunk_errors": {
            "type": "array",
            "description": "The final error of each failed chunk, in index order.",
            "items": obj(["chunk_index", "error"], chunk_index=COUNT, error=nullable(STRING)),
        },
        "split_chunks": {
            "type": "array",
            "description": "Chunks the model's context could not hold whole.",
            "items": obj(["chunk_index", "parts"], chunk_index=COUNT, parts=COUNT),
        },
        "provider_unavailable": {"type": "array", "items": ref("ProviderOutage")},
        "usage": nullable(
            obj(
                ["prompt_tokens", "completion_tokens"], prompt_tokens=COUNT, completion_tokens=COUNT
            )
        ),
        "metadata": ref("Metadata"),
        "webhook_url": nullable(STRING),
        "priority": PRIORITY,
        "max_chunk_chars": {"type": "integer", "minimum": 1},
        "text_chars": COUNT,
        "created_at": TIME,
        "updated_at": TIME,
        "finished_at": nullable(TIME),
    }
    return {
        "JobStatus": {
            "type": "string",
            "enum": JOB_STATUSES,
            "description": "Terminal: COMPLETED, PARTIAL_SUCCESS, FAILED, CANCELLED.",
        },
        "ChunkStatus": {"type": "string", "enum": CHUNK_STATUSES},
        "Metadata": {
            "type": "object",
            "maxProperties": MAX_METADATA_KEYS,
            "propertyNames": {"minLength": 1, "maxLength": MAX_METADATA_CHARS},
            "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_CHARS},
            "description": f"At most {MAX_METADATA_KEYS} string keys to strings, each of at"
            f" most {MAX_METADATA_CHARS} characters; stored and returned as sent.",
        },
        "Problem": {
            "type": "object",
            "description": "An RFC 9457 problem body.",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string", "format": "uri-reference"},
                "title": STRING,
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": STRING,
            },
        },
        "InvalidRequestProblem": {
            "allOf": [
                ref("Problem"),
                {
                    "type": "object",
                    "required": ["errors"],
                    "properties": {
                        "type": {"const": "urn:chunkq:problem:invalid-request"},
                        "errors": {
                            "type": "array",
                            "minItems": 1,
                            "description": "Every offending field, each with why.",
                            "items": obj(["field", "detail"], field=STRING, detail=STRING),
                        },
                    },
                },
            ],
        },
        "ReusedKeyProblem": {
            "allOf": [
                ref("Problem"),
                {"properties": {"type": {"const": "urn:chunkq:problem:idempotency-key-reused"}}},
            ]
        },
        "SubmitRequest": {
            "type": "object",
            "additionalProperties": False,
            "description": "raw_text or its other name text, not both.",
            "oneOf": [{"required": ["raw_text"]}, {"required": ["text"]}],
            "properties": {
                "raw_text": text,
                "text": {**text, "description": "Another name for raw_text."},
                "max_chunk_chars": {
                    "type": "integer",
                    "minimum": cfg["MIN_CHUNK_CHARS"],
                    "maximum": cfg["MAX_CHUNK_CHARS"],
                    "default": cfg["DEFAULT_CHUNK_CHARS"],
                    "description": "The longest chunk, in Unicode code points. A text that"
                    f" would make more than {cfg['MAX_CHUNKS_PER_JOB']} chunks is refused"
                    " (422).",
                },
                "reduce": {
                    "type": "boolean",
                    "default": cfg["REDUCE"],
                    "description": "After the chunks, one more provider call merges them.",
                },
                "metadata": ref("Metadata"),
                "webhook_url": {
                    "type": "string",
                    "description": "Where the job's terminal event is POSTed (http or https;"
                    " private and loopback addresses only with CHUNKQ_WEBHOOK_ALLOW_PRIVATE).",
                },
                "priority": PRIORITY,
            },
        },
        "SubmitAccepted": obj(
            [
                "job_id",
                "status",
                "chunks_total",
                "max_chunk_chars",
                "metadata",
                "status_url",
            ],
            job_id={"type": "string", "format": "uuid"},
            status={"const": "PENDING"},
            chunks_total={"type": "integer", "minimum": 1},
            max_chunk_chars={"type": "integer", "minimum": 1},
            metadata=ref("Metadata"),
            priority=PRIORITY,
            status_url={"type": "string", "description": "/v1/analyze/{job_id}"},
        ),
        "AttemptError": obj(
            ["chunk_index", "attempt", "error", "error_class", "at"],
            chunk_index=COUNT,
            attempt={"type": "integer", "minimum": 1},
            error=STRING,
            error_class=STRING,
            at=TIME,
        ),
        "ProviderOutage": obj(
            ["provider", "started_at", "ended_at", "seconds", "failed_calls", "probes"],
            provider=STRING,
            started_at=TIME,
            ended_at=nullable(TIME),
            seconds={"type": "number", "minimum": 0},
            failed_calls=COUNT,
            probes=COUNT,
            last_error=nullable(STRING),
        ),
        "ResultChunk": {
            **obj(
                ["index", "start", "end", "status"],
                index=COUNT,
                start=COUNT,
                end=COUNT,
                status={"type": "string", "enum": FINAL_CHUNK_STATUSES},
                result={"type": "object", "description": "The provider's output."},
                cached={
                    "type": "boolean",
                    "description": "The result came from the result cache (an identical chunk"
                    " analysed before), not from a provider call.",
                },
                error=nullable(STRING),
            ),
            "description": "One chunk, in order: raw_text[start:end] is its text; result (and"
            " cached) when it succeeded, error otherwise.",
        },
        "Reduce": obj(
            ["status"],
            status={
                "type": "string",
                "enum": [*REDUCE_STATUSES, "skipped"],
            },
            attempts=COUNT,
            result={"type": "object"},
            error=nullable(STRING),
            last_error=nullable(STRING),
            reason=STRING,
        ),
        "AnalysisResult": {
            **obj(
                ["summary"],
                chunks={"type": "array", "items": ref("ResultChunk")},
                summary={
                    "type": "object",
                    "description": "The document-level merge of the succeeded chunks;"
                    ' {"providers": [...]} when several providers took part, {"error": ...}'
                    " when the merge failed.",
                },
                reduce=ref("Reduce"),
            ),
            "description": "chunks is left out with ?chunks=false and in a cancel's answer.",
        },
        "JobSummary": {
            **obj(list(job_summary_fields), **job_summary_fields),
            "description": "A job's report without analysis_result (lists, webhooks).",
        },
        "JobReport": {
            "allOf": [
                ref("JobSummary"),
                obj(["analysis_result"], analysis_result=nullable(ref("AnalysisResult"))),
            ],
            "description": "analysis_result is null until the job is terminal.",
        },
        "JobList": obj(
            ["data", "next_cursor"],
            data={"type": "array", "items": ref("JobSummary")},
            next_cursor=nullable(STRING),
        ),
        "Chunk": {
            **obj(
                ["index", "start", "end", "status", "attempts", "provider"],
                index=COUNT,
                start=COUNT,
                end=COUNT,
                status=ref("ChunkStatus"),
                attempts=COUNT,
                provider={
                    **nullable(STRING),
                    "description": "The provider that produced the result (null: none yet).",
                },
                result={"type": "object", "description": "When the chunk succeeded."},
                error={"type": "string", "description": "The last error, when there was one."},
                text={"type": "string", "description": "The chunk's text, with ?text=true."},
            ),
            "description": "One chunk: raw_text[start:end] is its text.",
        },
        "ChunkList": obj(
            ["data", "next_cursor"],
            data={"type": "array", "items": ref("Chunk")},
            next_cursor=nullable(STRING),
        ),
        "ChunkStates": {
            **obj(
                ["status", "attempts", "score", "errors"],
                status={"type": "array", "items": ref("ChunkStatus")},
                attempts={"type": "array", "items": COUNT},
                score={
                    "type": "array",
                    "items": nullable({"type": "number"}),
                    "description": "A succeeded chunk's sentiment from -1 to 1 (the builtin"
                    " provider's compound score, a model's sentiment_score); null otherwise.",
                },
                errors={
                    "type": "array",
                    "items": obj(["index", "error"], index=COUNT, error=STRING),
                    "description": "The last error of each chunk that has one, in order.",
                },
            ),
            "description": "Parallel arrays, one entry per chunk in order.",
        },
        "Webhook": obj(
            [
                "id",
                "type",
                "url",
                "status",
                "attempts",
                "next_attempt_at",
                "created_at",
                "finished_at",
                "last_error",
                "deliveries",
            ],
            id=STRING,
            type={
                "type": "string",
                "enum": ["job.completed", "job.partial_success", "job.failed", "job.cancelled"],
            },
            url=STRING,
            status={"type": "string", "enum": WEBHOOK_STATUSES},
            attempts=COUNT,
            next_attempt_at=nullable(TIME),
            created_at=TIME,
            finished_at=nullable(TIME),
            last_error=nullable(STRING),
            deliveries={
                "type": "array",
                "items": obj(
                    ["attempt", "at", "status_code", "error", "duration_ms"],
                    attempt={"type": "integer", "minimum": 1},
                    at=TIME,
                    status_code=nullable(INT),
                    error=nullable(STRING),
                    duration_ms=nullable(COUNT),
                ),
            },
        ),
        "WebhookList": obj(["data"], data={"type": "array", "items": ref("Webhook")}),
    }
