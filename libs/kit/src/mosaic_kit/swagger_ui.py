"""Swagger UI from an installed package, so `/docs` works on a machine without internet.

The assets are those the `fastapi-swagger` distribution ships (a current Swagger UI 5 build),
found through its installed files, not by importing it (it imports FastAPI; the gateway, which
serves the same page, must not). The services (`mosaic_kit.fastapi.app`) and the gateway
(`mosaic_gateway.handlers.docs`) serve one page, this one, and its assets under `<docs path>/assets/`.
"""

from __future__ import annotations

import functools
import html
import importlib.metadata
from pathlib import Path

import orjson

__all__ = ["ASSETS", "asset", "page"]

_DISTRIBUTION = "fastapi-swagger"
_FOLDER = "fastapi_swagger/resources"
ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
"""The asset files by name, with their media types."""


@functools.cache
def asset(name: str) -> bytes:
    """The content of asset `name` (one of `ASSETS`), read once per process."""
    if name not in ASSETS:
        raise KeyError(name)
    located = importlib.metadata.distribution(_DISTRIBUTION).locate_file(f"{_FOLDER}/{name}")
    return Path(str(located)).read_bytes()


def page(title: str, document_url: str, assets_url: str) -> bytes:
    """The Swagger UI page reading `document_url`, its assets under `assets_url`."""
    assets = html.escape(assets_url.rstrip("/"), quote=True)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{url: {orjson.dumps(document_url).decode()}, dom_id: "#swagger-ui",
  persistAuthorization: true}});
</script>
</body>
</html>
""".encode()
