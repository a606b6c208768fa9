"""The dashboard's pages and files as the server sends them (the browser tests are in
tests/test_ui.py): no key needed, relative links only, a CSP with nothing inline."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient

JOB = "00000000-0000-0000-0000-000000000000"


def test_ui_pages__need_no_key_and_forbid_inline_and_foreign_scripts(app: Any) -> None:
    app.config["AUTH"] = True
    client = app.test_client()
    for path, root in (("/ui/", "../"), ("/ui/submit", "../"), (f"/ui/jobs/{JOB}", "../../")):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.mimetype == "text/html"
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self';" in policy and "unsafe-inline" not in policy
        assert "connect-src 'self'" in policy
        page = response.get_data(as_text=True)
        assert f'data-root="{root}"' in page and 'data-auth="on"' in page
        # Every link and script is relative: a proxy's path prefix survives.
        for url in re.findall(r'(?:href|src)="([^"]*)"', page):
            assert not url.startswith(("/", "http:", "https:", "//")), (path, url)
        # No inline script or event handler, which the policy would refuse to run.
        assert "<script>" not in page and re.search(r"\son[a-z]+=", page) is None


def test_ui_pages__say_when_auth_is_off(client: FlaskClient) -> None:
    assert 'data-auth="off"' in client.get("/ui/").get_data(as_text=True)


def test_ui_job_page__a_malformed_id_is_a_404_problem(client: FlaskClient) -> None:
    response = client.get("/ui/jobs/not-a-job")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


def test_ui_static__serves_the_files_and_nothing_outside_them(client: FlaskClient) -> None:
    for name, mimetype in (("job.js", "text/javascript"), ("ui.css", "text/css")):
        with client.get(f"/ui/static/{name}") as response:
            assert response.status_code == 200, name
            assert response.mimetype == mimetype
    assert client.get("/ui/static/nope.js").status_code == 404
    assert client.get("/ui/static/../ui.py").status_code == 404
    assert client.get("/ui/static/%2e%2e/ui.py").status_code == 404
