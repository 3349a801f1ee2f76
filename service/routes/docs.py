"""The interactive API docs (Swagger UI), served from this service under a strict CSP: the
assets come from the ``swagger-ui-bundle`` package, so the page loads nothing from a CDN."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

from lrprobe.service.errors import NotFoundError

router = APIRouter(include_in_schema=False)

_OWN = Path(__file__).resolve().parent.parent / "docs_assets"
ASSETS = {
    "swagger-ui.css": (Path(swagger_ui_path) / "swagger-ui.css", "text/css; charset=utf-8"),
    "swagger-ui-bundle.js": (
        Path(swagger_ui_path) / "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
    ),
    "swagger-init.js": (_OWN / "swagger-init.js", "text/javascript; charset=utf-8"),
    "favicon-32x32.png": (Path(swagger_ui_path) / "favicon-32x32.png", "image/png"),
}
# Swagger UI sets style attributes from script, hence 'unsafe-inline' for styles only; no
# inline script, no eval, nothing from another origin.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>lrprobe API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/swagger-init.js"></script>
</body>
</html>
"""


@router.get("/docs")
def docs() -> HTMLResponse:
    return HTMLResponse(_PAGE, headers={"Content-Security-Policy": DOCS_CSP})


@router.get("/docs/assets/{name}")
def docs_asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFoundError(f"There is no docs asset {name!r}; open /docs.")
    path, media_type = ASSETS[name]
    return FileResponse(
        path, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"}
    )
