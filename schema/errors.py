"""The domain's exception hierarchy; web turns these into problem bodies in one place."""

from __future__ import annotations


class ChunkqError(Exception):
    """Base of every error chunkq raises on purpose."""


class InvalidRequest(ChunkqError):
    """A request a client must fix; names the offending field."""

    def __init__(self, field: str, detail: str, *, status: int = 422) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail
        self.status = status


class JobNotFound(ChunkqError):
    """No job has this id."""


class JobConflict(ChunkqError):
    """The job is in a state that does not allow the request (e.g. cancelling a finished job)."""


class DatabaseUnavailable(ChunkqError):
    """PostgreSQL cannot be reached right now; the caller should retry later."""


class DatabaseUrlMissing(ChunkqError, RuntimeError):
    """DATABASE_URL is unset where only a configured database will do (web, worker, alembic)."""


class KeyNotFound(ChunkqError):
    """No API key has this id."""


class LimitExceeded(ChunkqError):
    """A tenant's limit would be passed; the client should retry later."""

    def __init__(self, detail: str, *, retry_after_s: int = 30) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class IdempotencyMismatch(ChunkqError):
    """An ``Idempotency-Key`` already used for a request with a different body."""


class Unauthenticated(ChunkqError):
    """A request without a key, or with one that is malformed, unknown or revoked."""

    def __init__(self, detail: str, *, error: str | None = None) -> None:
        super().__init__(detail)
        self.error = error  # RFC 6750's error code, for WWW-Authenticate
