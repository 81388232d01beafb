"""The OpenAPI document, finished once, and /docs and /redoc served without a CDN.

FastAPI's generated document is adjusted where it cannot say what the server does: input
errors are 400 (never 422), protected
operations name their security schemes, and the V2 infer body references its schema.
Swagger UI and ReDoc load from the assets of the `fastapi-offline` package, served here.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from service.wire.schemas.v2 import InferenceRequest

ASSETS = "/docs-assets"
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
_UNUSED_SCHEMAS = ("HTTPValidationError", "ValidationError")


def install(app: FastAPI) -> None:
    """Finish app.openapi's document and add /docs, /redoc and their assets (create the app with
    docs_url=None, redoc_url=None and generate_unique_id_function=operation_id)."""
    generate = app.openapi
    finished: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not finished:
            finished.update(finish(generate()))
        return finished

    app.openapi = openapi  # type: ignore[method-assign]
    static = resources.files("fastapi_offline") / "static"
    app.mount(ASSETS, StaticFiles(directory=str(static)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def get_swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def get_redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def operation_id(route: APIRoute) -> str:
    """Stable, readable operation ids: the route function's name (`predict_digits`)."""
    return route.name


def finish(spec: dict[str, Any]) -> dict[str, Any]:
    """The adjustments described in the module docstring, applied to a generated document."""
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    request = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(request.pop("$defs", {}))
    schemas["InferenceRequest"] = request
    components["securitySchemes"] = SECURITY_SCHEMES
    for operations in spec["paths"].values():
        for op in operations.values():
            op.get("responses", {}).pop("422", None)
            if "401" in op.get("responses", {}):
                op["security"] = [{"bearer": []}, {"apiKey": []}]
    for name in _UNUSED_SCHEMAS:
        schemas.pop(name, None)
    return spec
