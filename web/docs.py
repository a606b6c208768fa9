"""``GET /docs``: the OpenAPI document rendered for people, by Swagger UI.

Swagger UI's files come from the swagger-ui-bundle package and are served from here, so the
page works with no network beyond this server (no CDN).
"""

from __future__ import annotations

from flask import Blueprint, Response, send_from_directory
from swagger_ui_bundle import swagger_ui_path

bp = Blueprint("docs", __name__)

# Relative links: the page works under any path prefix a proxy puts in front of the API.
PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>chunkq API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/swagger-ui-standalone-preset.js"></script>
  <script src="docs/chunkq-init.js"></script>
</body>
</html>
"""

# A file of its own rather than an inline script, so a Content-Security-Policy without
# 'unsafe-inline' still lets the page run.
INIT_FILE = "chunkq-init.js"
INIT = """window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "StandaloneLayout"
});
"""


@bp.get("/docs")
def page() -> Response:
    return Response(PAGE, mimetype="text/html")


@bp.get("/docs/<path:file>")
def static_file(file: str) -> Response:
    """The page's own script, or one of Swagger UI's files (send_from_directory refuses a
    path outside their folder)."""
    if file == INIT_FILE:
        return Response(INIT, mimetype="text/javascript")
    return send_from_directory(str(swagger_ui_path), file, max_age=3600)
