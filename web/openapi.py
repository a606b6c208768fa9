"""``GET /openapi.json``: the OpenAPI 3.1 document of every route, built here as Python data.

It describes what the handlers do (web/analyze.py, web/validation.py, web/problems.py,
schema/reads.py), with the limits taken from the app's configuration, so a client generated
from it and the server agree. tests/test_openapi.py validates it and runs schemathesis
against a real server with it.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from flask import Blueprint, current_app

from web.openapi_schemas import JOB_STATUSES, STRING, obj, ref, schemas
from web.problems import PROBLEM_JSON

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi_json() -> dict[str, Any]:
    return document(current_app.config)


def _json(schema: dict[str, Any], description: str, **headers: Any) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in headers}
    return response


def _problem(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def responses() -> dict[str, Any]:
    """The problem responses, reused across routes."""

    def problem(description: str, schema: str = "Problem", *headers: str) -> dict[str, Any]:
        response: dict[str, Any] = {
            "description": description,
            "content": {PROBLEM_JSON: {"schema": ref(schema)}},
        }
        if headers:
            response["headers"] = {h: {"$ref": f"#/components/headers/{h}"} for h in headers}
        return response

    return {
        "BadRequest": problem(
            "The request cannot be read: a bad header or query parameter, a wrong"
            " Content-Type, a body that is not UTF-8 JSON (or repeats a key, or ends before"
            " its Content-Length), or a body that is not an object. Each is named in errors.",
            "InvalidRequestProblem",
        ),
        "Unauthorized": problem(
            "No API key, a malformed one, or one unknown or revoked.",
            "Problem",
            "WWW-Authenticate",
        ),
        "NotFound": problem(
            "No such job for this key (another key's job, an unknown id or one that is not a UUID)."
        ),
        "Conflict": problem("The job is already terminal."),
        "TooLarge": problem("The body is larger than the limit (CHUNKQ_MAX_BODY_BYTES)."),
        "Unprocessable": {
            "description": "A field is missing or wrong (every one named in errors), the"
            " text would make too many chunks, or the Idempotency-Key was used for a"
            " different request (type urn:chunkq:problem:idempotency-key-reused).",
            "content": {
                PROBLEM_JSON: {
                    "schema": {"oneOf": [ref("InvalidRequestProblem"), ref("ReusedKeyProblem")]}
                }
            },
        },
        "TooManyRequests": problem(
            "The key's limit of jobs in flight or queued chunks would be passed.",
            "Problem",
            "Retry-After",
        ),
        "Unavailable": problem(
            "The database cannot be reached right now.", "Problem", "Retry-After"
        ),
        # Answered by gunicorn itself, before the app, in its own format.
        "TooLongForTheServer": {
            "description": "The request line or its headers are longer than the HTTP server"
            " reads (gunicorn's limit_request_line, 4094 bytes, and limit_request_field_size,"
            " 8190): gunicorn refuses the request before the app sees it, with an HTML body.",
            "content": {"text/html": {"schema": STRING}},
        },
    }


HEADERS = {
    "Location": {
        "description": "Where the job's full report is: /v1/analyze/{job_id}.",
        "required": True,
        "schema": STRING,
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "WWW-Authenticate": {
        "description": 'Bearer realm="chunkq", with an RFC 6750 error when a key was sent.',
        "required": True,
        "schema": {"type": "string", "pattern": "^Bearer "},
    },
}

JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}


def _limit(most: int, default: int) -> dict[str, Any]:
    return {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": most, "default": default},
    }


CURSOR = {
    "name": "cursor",
    "in": "query",
    "description": "The next_cursor of the page before.",
    "schema": STRING,
}


def _v1(operation: dict[str, Any], *codes: str) -> dict[str, Any]:
    """A /v1 operation: the key is needed, and the problems every /v1 route can answer."""
    common = {
        "400": _problem("BadRequest"),
        "401": _problem("Unauthorized"),
        "404": _problem("NotFound"),
        "409": _problem("Conflict"),
        "413": _problem("TooLarge"),
        "422": _problem("Unprocessable"),
        "429": _problem("TooManyRequests"),
        "503": _problem("Unavailable"),
    }
    operation["responses"].update({code: common[code] for code in ("401", *codes, "503")})
    operation["tags"] = ["jobs"]
    return operation


def paths() -> dict[str, Any]:
    statuses = ", ".join(JOB_STATUSES)
    return {
        "/v1/analyze": {
            "post": _v1(
                {
                    "operationId": "submitJob",
                    "summary": "Submit a text: it is chunked and queued, nothing slow happens",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "description": "The same key with the same body answers the same"
                            " 202 and job, writing nothing new (kept at least 24 h); with a"
                            " different body, 422.",
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 255,
                                "pattern": "^[ -~]+$",
                            },
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("SubmitRequest")}},
                    },
                    "responses": {
                        "202": {
                            **_json(ref("SubmitAccepted"), "Queued.", Location=True),
                            "links": {
                                name: {
                                    "operationId": name,
                                    "parameters": {"job_id": "$response.body#/job_id"},
                                }
                                for name in ("getJob", "cancelJob", "listChunks", "listWebhooks")
                            },
                        },
                    },
                },
                "400",
                "413",
                "422",
                "429",
            ),
            "get": _v1(
                {
                    "operationId": "listJobs",
                    "summary": "The key's jobs, newest first",
                    "description": "Any other query parameter is a 400.",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "description": f"One of {statuses}, or several separated by commas.",
                            "schema": {
                                "type": "string",
                                "pattern": f"^({'|'.join(JOB_STATUSES)})"
                                f"(,({'|'.join(JOB_STATUSES)}))*$",
                            },
                        },
                        _limit(100, 20),
                        CURSOR,
                        {
                            "name": "metadata",
                            "in": "query",
                            "style": "deepObject",
                            "explode": True,
                            "description": "metadata[KEY]=VALUE: only jobs whose metadata has"
                            " KEY equal to VALUE.",
                            "schema": {"type": "object", "additionalProperties": STRING},
                        },
                    ],
                    "responses": {"200": _json(ref("JobList"), "A page of jobs.")},
                },
                "400",
            ),
        },
        "/v1/analyze/{job_id}": {
            "get": _v1(
                {
                    "operationId": "getJob",
                    "summary": "A job's progress, every failed attempt, and its result",
                    "parameters": [
                        JOB_ID,
                        {
                            "name": "chunks",
                            "in": "query",
                            "description": "false leaves out analysis_result.chunks (1 and 0"
                            " are taken too).",
                            "schema": {"type": "boolean", "default": True},
                        },
                    ],
                    "responses": {"200": _json(ref("JobReport"), "The job's report.")},
                },
                "400",
                "404",
            ),
        },
        "/v1/analyze/{job_id}/cancel": {
            "post": _v1(
                {
                    "operationId": "cancelJob",
                    "summary": "Cancel a job that has not finished",
                    "parameters": [JOB_ID],
                    "responses": {
                        "200": _json(
                            ref("JobReport"),
                            "Cancelled: the report without analysis_result.chunks.",
                            Location=True,
                        )
                    },
                },
                "404",
                "409",
            ),
        },
        "/v1/analyze/{job_id}/chunks": {
            "get": _v1(
                {
                    "operationId": "listChunks",
                    "summary": "A job's chunks in order, a page at a time or as NDJSON",
                    "parameters": [
                        JOB_ID,
                        CURSOR,
                        {
                            **_limit(1000, 100),
                            "description": "Chunks per page (per read, for NDJSON, whose default"
                            " is 1000).",
                        },
                        {
                            "name": "from",
                            "in": "query",
                            "description": "Start at this chunk index (a page by number);"
                            " not with cursor.",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                        },
                        {
                            "name": "text",
                            "in": "query",
                            "description": "true adds each chunk's text (1 and 0 are taken too).",
                            "schema": {"type": "boolean", "default": False},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "A page of chunks; with Accept:"
                            " application/x-ndjson, every chunk from cursor on, one JSON"
                            " object (a Chunk) per line.",
                            "content": {
                                "application/json": {"schema": ref("ChunkList")},
                                "application/x-ndjson": {"schema": ref("Chunk")},
                            },
                        }
                    },
                },
                "400",
                "404",
            ),
        },
        "/v1/analyze/{job_id}/chunks/states": {
            "get": _v1(
                {
                    "operationId": "getChunkStates",
                    "summary": "Every chunk's status, attempts and sentiment score, in one read",
                    "parameters": [JOB_ID],
                    "responses": {"200": _json(ref("ChunkStates"), "The job's chunks.")},
                },
                "404",
            ),
        },
        "/v1/analyze/{job_id}/webhooks": {
            "get": _v1(
                {
                    "operationId": "listWebhooks",
                    "summary": "A job's webhook events and each delivery attempt",
                    "parameters": [JOB_ID],
                    "responses": {"200": _json(ref("WebhookList"), "The job's events.")},
                },
                "404",
            ),
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: the database answers",
                "tags": ["probes"],
                "security": [],
                "responses": {
                    "200": _json(obj(["status"], status={"const": "ok"}), "Alive."),
                    "503": _problem("Unavailable"),
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: the database answers and its schema is at the head",
                "tags": ["probes"],
                "security": [],
                "responses": {
                    "200": _json(
                        obj(["status", "revision"], status={"const": "ready"}, revision=STRING),
                        "Ready.",
                    ),
                    "503": _problem("Unavailable"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "The queue's gauges for Prometheus, read from the database now",
                "tags": ["probes"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text format (OpenMetrics when asked).",
                        "content": {
                            "text/plain": {"schema": STRING},
                            "application/openmetrics-text": {"schema": STRING},
                        },
                    },
                    "503": _problem("Unavailable"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "tags": ["docs"],
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")},
            }
        },
        "/docs": {
            "get": {
                "operationId": "docs",
                "summary": "This document, rendered for people (Swagger UI)",
                "tags": ["docs"],
                "security": [],
                "responses": {
                    "200": {"description": "A page.", "content": {"text/html": {"schema": STRING}}}
                },
            }
        },
        **ui_paths(),
        "/docs/{file}": {
            "get": {
                "operationId": "docsFile",
                "summary": "The page's scripts and styles (Swagger UI's own files)",
                "tags": ["docs"],
                "security": [],
                "parameters": [{"name": "file", "in": "path", "required": True, "schema": STRING}],
                "responses": {
                    "200": {"description": "The file.", "content": {"*/*": {}}},
                    "404": {
                        "description": "No such file.",
                        "content": {PROBLEM_JSON: {"schema": ref("Problem")}},
                    },
                },
            }
        },
    }


def ui_paths() -> dict[str, Any]:
    """The dashboard's pages and files (web/ui.py): no key, the page asks for one."""
    html = {"description": "A page.", "content": {"text/html": {"schema": STRING}}}
    not_found = {
        "description": "No such job id or file.",
        "content": {PROBLEM_JSON: {"schema": ref("Problem")}},
    }

    def page(operation_id: str, summary: str, *parameters: Any, **more: Any) -> dict[str, Any]:
        return {
            "get": {
                "operationId": operation_id,
                "summary": summary,
                "tags": ["ui"],
                "security": [],
                "parameters": list(parameters),
                "responses": {"200": html, **more},
            }
        }

    file = {"name": "file", "in": "path", "required": True, "schema": STRING}
    static = page("uiFile", "The dashboard's scripts and styles", file, **{"404": not_found})
    static["get"]["responses"]["200"] = {"description": "The file.", "content": {"*/*": {}}}
    return {
        "/ui/": page("uiJobs", "Dashboard: the jobs, live"),
        "/ui/submit": page("uiSubmit", "Dashboard: submit a text or a file"),
        "/ui/jobs/{job_id}": page(
            "uiJob", "Dashboard: one job, its chunks and its analysis", JOB_ID, **{"404": not_found}
        ),
        "/ui/static/{file}": static,
    }


def document(cfg: Any) -> dict[str, Any]:
    """The whole document, for an app with configuration ``cfg``."""
    components = {
        "schemas": schemas(cfg),
        "responses": responses(),
        "headers": HEADERS,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (chunkq keys create), sent as Authorization:"
                " Bearer <key>. With CHUNKQ_AUTH=off no key is needed.",
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "chunkq",
            "version": _version(),
            "summary": "Analyse long texts with AI reliably: chunked, queued in PostgreSQL,"
            " retried, merged in order.",
            "description": "Errors are application/problem+json bodies (RFC 9457) with type,"
            " title, status, detail and, for invalid requests, errors: [{field, detail}].",
        },
        "security": [{"bearer": []}],
        "tags": [
            {"name": "jobs", "description": "Submit, read, list and cancel jobs."},
            {"name": "probes", "description": "For load balancers and orchestrators."},
            {"name": "docs", "description": "This document."},
            {"name": "ui", "description": "The dashboard, for people."},
        ],
        "paths": _with_server_refusals(paths()),
        "components": components,
    }


def _with_server_refusals(items: dict[str, Any]) -> dict[str, Any]:
    """Every operation can meet gunicorn's own refusals of a too-long request line (414)
    or too-large headers (431)."""
    for item in items.values():
        for operation in item.values():
            for code in ("414", "431"):
                operation["responses"].setdefault(code, _problem("TooLongForTheServer"))
    return items


def _version() -> str:
    try:
        return metadata.version("chunkq")
    except metadata.PackageNotFoundError:
        return "0.0.0"
