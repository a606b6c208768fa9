"""Lists: a tenant's jobs (``GET /v1/analyze``) and a job's chunks, a page at a time or as
NDJSON (``GET /v1/analyze/<id>/chunks``), with the keyset cursors of ``schema.listing``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from flask import Blueprint, Response, request, stream_with_context

from schema import listing, reads
from schema.errors import InvalidRequest, JobNotFound
from schema.states import JobStatus
from web import auth
from web.args import flag_arg, int_arg, parse_id
from web.database import connection
from web.problems import ValidationFailed

bp = Blueprint("listing", __name__, url_prefix="/v1/analyze")

NDJSON = "application/x-ndjson"
_METADATA_ARG = re.compile(r"metadata\[(.+)\]")


@bp.get("")
def list_jobs() -> Response:
    """The caller's jobs, newest first, a page at a time: ``?status=&limit=&cursor=`` and
    ``metadata[KEY]=VALUE`` filters; each job's report without ``analysis_result``."""
    metadata: dict[str, str] = {}
    errors: list[InvalidRequest] = []
    for name in request.args:
        if match := _METADATA_ARG.fullmatch(name):
            if "\x00" in name or "\x00" in request.args[name]:
                # jsonb cannot hold U+0000, so the filter could not even be written as one.
                errors.append(
                    InvalidRequest(
                        name,
                        "contains a NUL character (U+0000), which metadata cannot hold",
                        status=400,
                    )
                )
                continue
            metadata[match.group(1)] = request.args[name]
        elif name not in ("status", "limit", "cursor"):
            errors.append(
                InvalidRequest(
                    name,
                    "is not a known parameter (known: status, limit, cursor, metadata[KEY])",
                    status=400,
                )
            )
    statuses = None
    if "status" in request.args:
        statuses = request.args["status"].split(",")
        unknown = [s for s in statuses if s not in JobStatus.__members__.values()]
        if unknown:
            known = ", ".join(JobStatus)
            errors.append(
                InvalidRequest(
                    "status", f"{unknown[0]!r} is not a job status (known: {known})", status=400
                )
            )
    if errors:
        raise ValidationFailed(errors)
    limit = int_arg("limit", default=20, most=listing.MAX_JOBS_PAGE)
    with connection(write=False) as conn:
        page = _paged(
            lambda cursor: listing.jobs(
                conn,
                owner=auth.owner(),
                statuses=statuses,
                metadata=metadata,
                limit=limit,
                cursor=cursor,
            )
        )
    return Response(page.json(), mimetype="application/json")


@bp.get("/<job_id>/chunks")
def chunks(job_id: str) -> Response:
    """A job's chunks in order, each with its result or last error, a page at a time
    (``?cursor=&limit=``, or ``?from=INDEX`` for a page by number), or all of them as NDJSON
    (``Accept: application/x-ndjson``); ``?text=true`` adds each chunk's text."""
    key = parse_id(job_id)
    ndjson = request.accept_mimetypes.best_match(["application/json", NDJSON]) == NDJSON
    limit = int_arg(
        "limit", default=listing.MAX_CHUNKS_PAGE if ndjson else 100, most=listing.MAX_CHUNKS_PAGE
    )
    text = flag_arg("text", default=False)
    first = _index_arg("from")
    if "from" in request.args and request.args.get("cursor"):
        why = "cannot be given with cursor: use one or the other"
        raise ValidationFailed([InvalidRequest("from", why, status=400)])
    with connection(write=False) as conn:
        if not reads.exists(conn, key, owner=auth.owner()):
            raise JobNotFound(job_id)
        page = _paged(
            lambda cursor: listing.chunks(
                conn, key, limit=limit, cursor=cursor, first=first, text=text
            )
        )
    if not ndjson:
        return Response(page.json(), mimetype="application/json")

    def lines(page: listing.Page) -> Iterator[str]:
        # A page per short read, the connection back in the pool between them: a slow
        # reader holds no connection and no snapshot.
        while True:
            yield from (f"{item}\n" for item in page.items)
            if page.next_cursor is None:
                return
            with connection(write=False) as conn:
                page = listing.chunks(conn, key, limit=limit, cursor=page.next_cursor, text=text)

    return Response(stream_with_context(lines(page)), mimetype=NDJSON)


@bp.get("/<job_id>/chunks/states")
def chunk_states(job_id: str) -> Response:
    """Every chunk's status, attempts and sentiment score, and each last error, in one small
    read: what a dashboard polls to draw a running job's chunk grid and chart."""
    key = parse_id(job_id)
    with connection(write=False) as conn:
        if not reads.exists(conn, key, owner=auth.owner()):
            raise JobNotFound(job_id)
        body = listing.chunk_states(conn, key)
    return Response(body, mimetype="application/json")


def _index_arg(name: str) -> int:
    """A chunk index (0 or more) from the query string, 0 when absent; else a 400."""
    value = request.args.get(name)
    if value is None:
        return 0
    if not (value.isascii() and value.isdigit()) or int(value) > 2**31 - 1:
        raise ValidationFailed(
            [InvalidRequest(name, f"must be a chunk index (0 or more), got {value!r}", status=400)]
        )
    return int(value)


def _paged(read: Callable[[str | None], listing.Page]) -> listing.Page:
    """``read(cursor)`` for this request's ``?cursor=``; a cursor we did not make is a 400."""
    cursor = request.args.get("cursor") or None
    try:
        return read(cursor)
    except listing.BadCursor as exc:
        raise ValidationFailed([InvalidRequest("cursor", str(exc), status=400)]) from exc
