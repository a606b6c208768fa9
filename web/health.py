"""``GET /healthz``: 200 when the database answers, 503 otherwise (for load balancers)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app
from sqlalchemy import text

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, Any]:
    with current_app.extensions["chunkq.engine"].connect() as conn:
        conn.execute(text("SELECT 1"))
    return {"status": "ok"}
