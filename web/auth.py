"""Who a ``/v1`` request acts for: ``Authorization: Bearer <key>`` when CHUNKQ_AUTH is on.

With auth off, every request is the anonymous tenant and sees every job. With it on, a
request without a live key is refused with 401 before any handler runs, and a key sees
only its own jobs: anyone else's is 404, as if it did not exist.
"""

from __future__ import annotations

from flask import Flask, current_app, g, request

from schema import tenants
from schema.errors import Unauthenticated
from web.database import connection


def register(app: Flask) -> None:
    @app.before_request
    def _authenticate() -> None:
        if request.path == "/v1" or request.path.startswith("/v1/"):
            g.tenant = _tenant()


def tenant() -> tenants.Tenant:
    """The tenant of the current ``/v1`` request."""
    return g.tenant


def owner() -> str | None:
    """The tenant whose jobs this request may see; None: every job (auth is off)."""
    return g.tenant.id if current_app.config["AUTH"] else None


def _tenant() -> tenants.Tenant:
    if not current_app.config["AUTH"]:
        return tenants.anonymous()
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise Unauthenticated("this API needs a key: send Authorization: Bearer <key>")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthenticated(
            "the Authorization header must be 'Bearer <key>'", error="invalid_request"
        )
    with connection(write=False) as conn:
        found = tenants.authenticate(conn, key.strip())
    if found is None:
        raise Unauthenticated("the API key is unknown or revoked", error="invalid_token")
    return found
