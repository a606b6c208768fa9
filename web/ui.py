"""``/ui/``: the dashboard for people: the jobs, one job's chunks and analysis, a submit form.

The pages are templates with no data in them; their scripts (``web/assets/ui/``) read the
``/v1`` JSON API with the key the page asks for, so the dashboard sees what the key sees and
nothing more. Every link is relative, so the pages work under any path prefix a proxy adds,
and every asset is served from here (no CDN).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, render_template, send_from_directory

from web.args import parse_id

bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates")

ASSETS = Path(__file__).resolve().parent / "assets" / "ui"
# Scripts and styles only from this server, none inline, and requests only to it: server
# text can never run as script, and a page can leak nothing to another host.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


@bp.after_request
def _policy(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _page(template: str, root: str, **context: object) -> str:
    """A page; ``root`` is the relative way from it back to the app's root."""
    auth = "on" if current_app.config["AUTH"] else "off"
    return render_template(f"ui/{template}", root=root, auth=auth, **context)


@bp.get("/")
def jobs() -> str:
    return _page("jobs.html", "../")


@bp.get("/submit")
def submit() -> str:
    return _page("submit.html", "../")


@bp.get("/jobs/<job_id>")
def job(job_id: str) -> str:
    """A job's page for any well-formed id: whether the key may see it, the API says."""
    return _page("job.html", "../../", job_id=str(parse_id(job_id)))


@bp.get("/static/<path:file>")
def static_file(file: str) -> Response:
    """The pages' scripts, styles and icon (send_from_directory refuses a path outside)."""
    return send_from_directory(ASSETS, file, max_age=300)
