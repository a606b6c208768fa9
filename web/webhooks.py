"""``GET /v1/analyze/<job_id>/webhooks``: a job's webhook events and every delivery attempt,
so a client can see what was sent, what its endpoint answered, and what comes next."""

from __future__ import annotations

import uuid

from flask import Blueprint, Response

from schema import webhooks
from schema.errors import JobNotFound
from web import auth
from web.database import connection

bp = Blueprint("webhooks", __name__, url_prefix="/v1/analyze")


@bp.get("/<job_id>/webhooks")
def events(job_id: str) -> Response:
    """The job's events, oldest first, each with its attempts; 404 for an unknown job or
    one of another tenant."""
    try:
        key = uuid.UUID(job_id)
    except ValueError as exc:
        raise JobNotFound(job_id) from exc
    with connection(write=False) as conn:
        body = webhooks.events_json(conn, key, owner=auth.owner())
    if body is None:
        raise JobNotFound(job_id)
    return Response(body, mimetype="application/json")
