"""RFC 9457 problem bodies: the one place where errors become HTTP responses."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import sqlalchemy.exc
from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException

from schema.errors import (
    DatabaseUnavailable,
    IdempotencyMismatch,
    InvalidRequest,
    JobConflict,
    JobNotFound,
    LimitExceeded,
    Unauthenticated,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = 5


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """A problem+json response; ``extra`` becomes extension members (RFC 9457 section 3.2)."""
    body = {"type": type_, "title": title, "status": status, "detail": detail, **extra}
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


class ValidationFailed(Exception):
    """One or more request fields are wrong; carries every finding so clients fix them at once."""

    def __init__(self, errors: list[InvalidRequest]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


def register(app: Flask) -> None:
    """Install the handlers that turn every error into a problem body."""

    @app.errorhandler(ValidationFailed)
    def _validation(exc: ValidationFailed) -> Response:
        status = max(e.status for e in exc.errors)
        if any(e.status == 400 for e in exc.errors):
            status = 400
        return problem(
            status,
            "Invalid request",
            str(exc),
            type_="urn:chunkq:problem:invalid-request",
            errors=[{"field": e.field, "detail": e.detail} for e in exc.errors],
        )

    @app.errorhandler(JobNotFound)
    def _not_found(exc: JobNotFound) -> Response:
        return problem(
            404, "Job not found", f"no job with id {exc}", type_="urn:chunkq:problem:job-not-found"
        )

    @app.errorhandler(JobConflict)
    def _conflict(exc: JobConflict) -> Response:
        return problem(
            409, "Job already finished", str(exc), type_="urn:chunkq:problem:job-finished"
        )

    @app.errorhandler(Unauthenticated)
    def _unauthenticated(exc: Unauthenticated) -> Response:
        challenge = 'Bearer realm="chunkq"'
        if exc.error:
            challenge += f', error="{exc.error}"'
        return problem(
            401,
            "Unauthorized",
            str(exc),
            type_="urn:chunkq:problem:unauthorized",
            headers={"WWW-Authenticate": challenge},
        )

    @app.errorhandler(LimitExceeded)
    def _limited(exc: LimitExceeded) -> Response:
        return problem(
            429,
            "Too many requests",
            str(exc),
            type_="urn:chunkq:problem:limit-exceeded",
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    @app.errorhandler(IdempotencyMismatch)
    def _idempotency(exc: IdempotencyMismatch) -> Response:
        return problem(
            422,
            "Idempotency key reused",
            str(exc),
            type_="urn:chunkq:problem:idempotency-key-reused",
        )

    @app.errorhandler(DatabaseUnavailable)
    @app.errorhandler(psycopg.OperationalError)
    @app.errorhandler(sqlalchemy.exc.OperationalError)
    @app.errorhandler(sqlalchemy.exc.DisconnectionError)
    def _unavailable(exc: Exception) -> Response:
        log.warning("database unavailable: %s", exc)
        return problem(
            503,
            "Database unavailable",
            "the database cannot be reached right now; retry shortly",
            type_="urn:chunkq:problem:database-unavailable",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        detail = exc.description or exc.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"the request body is larger than the limit of {limit} bytes"
        response = problem(status, exc.name, detail)
        if status == 405 and exc.response is None:
            valid = getattr(exc, "valid_methods", None)
            if valid:
                response.headers["Allow"] = ", ".join(valid)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return problem(500, "Internal Server Error", "an unexpected error occurred; it was logged")
