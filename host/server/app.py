"""``create_app(engine)``: the FastAPI application serving the HTTP contract."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware import Middleware
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.responses import Response

from orchestrator import Engine
from orchestrator.wire import from_wire

from . import (
    routes_actors,
    routes_blobs,
    routes_cluster,
    routes_events,
    routes_inspector,
    routes_ops,
    routes_patch,
    routes_ports,
    routes_pty,
    routes_run_events,
    routes_runs,
    routes_sessions,
    routes_ui,
    routes_vms,
    routes_workflows,
)
from .arguments import ArgumentChecker
from .common import json_response
from .errors import install_error_handlers
from .fastpath import QueueSendFastPath, fastapi_telemetry
from .forward import ClusterOriginMiddleware, install_forwarding
from .guard import BrowserGuardMiddleware, JsonBodyMiddleware
from .middleware import (
    BearerAuthMiddleware,
    BodyLimitMiddleware,
    TimingMiddleware,
    UnexpectedErrorMiddleware,
)
from .models import ActionRequest, ActionResponse, ErrorBody
from .paths import RawPathMiddleware
from .routes_ops import VERSION, register_engine_gauges
from .settings import ServerSettings

DESCRIPTION = """\
agentvm: sandboxed agent VMs and the durable orchestrators that drive them.

Actor keys in paths are their parts joined by `,`, each part percent-encoded.
Bytes inside JSON travel as `{"$bytes": "<base64>"}`. Errors are
`{"error": {"group", "code", "message", "metadata"}}`. Broadcasts stream as
server-sent events at `/actors/{name}/{key}/events` and over a WebSocket at
`/actors/{name}/{key}/connect`.
"""


def create_app(
    engine: Engine,
    *,
    token: str | None = None,
    max_body: int | None = None,
    max_upload: int | None = None,
    settings: ServerSettings | None = None,
    bench_routes: bool = False,
) -> FastAPI:
    """The application for a started (or soon started) ``engine``.

    ``token`` (default: ``settings.token``) is required as a bearer token on every
    request but ``/healthz``; ``max_body`` bounds JSON request bodies (413 beyond).
    ``bench_routes`` adds a bare echo route used by ``bench/http_api.py``.
    """
    base = settings or ServerSettings()
    updates: dict[str, Any] = {}
    if token is not None:
        updates["token"] = token or None
    if max_body is not None:
        updates["max_body"] = max_body
    if max_upload is not None:
        updates["max_upload"] = max_upload
    cfg = base.model_copy(update=updates) if updates else base

    middleware = [
        Middleware(TimingMiddleware),
        Middleware(
            BrowserGuardMiddleware,
            bind=cfg.bind,
            allowed_hosts=cfg.allowed_hosts,
            allowed_origins=cfg.allowed_origins,
        ),
        *([Middleware(BearerAuthMiddleware, token=cfg.token)] if cfg.token else []),
        Middleware(BodyLimitMiddleware, max_body=cfg.max_body, max_upload=cfg.max_upload),
        Middleware(JsonBodyMiddleware, max_depth=cfg.max_json_depth),
        Middleware(RawPathMiddleware),
        Middleware(UnexpectedErrorMiddleware),
        # Several hosts on one database: where a request came from (forward.py).
        *([Middleware(ClusterOriginMiddleware)] if engine.cluster is not None else []),
        Middleware(QueueSendFastPath),  # innermost: plain queue sends skip the router
    ]
    app = FastAPI(
        title="agentvm",
        version=VERSION,
        description=DESCRIPTION,
        middleware=middleware,
        docs_url="/docs",
        redoc_url=None,
        generate_unique_id_function=operation_id,
        telemetry=fastapi_telemetry(),
    )
    app.state.engine = engine
    app.state.settings = cfg
    app.state.arguments = ArgumentChecker(engine.registry)
    install_error_handlers(app)
    install_forwarding(app)
    for module in (
        routes_actors,
        routes_inspector,
        routes_events,
        routes_vms,
        routes_blobs,
        routes_ops,
        routes_cluster,
        routes_patch,
        routes_ports,
        routes_pty,
        routes_run_events,
        routes_runs,
        routes_sessions,
        routes_workflows,
        routes_ui,
    ):
        app.include_router(module.router)
    if bench_routes:
        _add_bench_routes(app)
    register_engine_gauges(engine)
    _override_openapi(app)
    return app


# Endpoint functions whose names make poor operationIds (clients name their methods
# after these; keep them stable), by name or ``module.name`` (for a name that two
# modules use). Every other route gets its function's name.
OPERATION_IDS = {
    "routes_workflows.run_events": "workflow_run_events",
    "destroy": "destroy_actor",
    "queue": "queue_contents",
    "summary": "inspector_summary",
    "download": "download_file",
    "upload": "upload_file",
    "run_patch": "get_run_patch",
    "all_runs": "list_runs",
    "actor_runs": "list_actor_runs",
    "schema": "workflow_schema",
    "validate": "validate_workflow",
    "ports": "list_ports",
    "watch": "watch_files",
}


def operation_id(route: APIRoute) -> str:
    """The route's OpenAPI ``operationId``: its endpoint function's name (``call_action``,
    ``list_runs``), short and stable, so generated clients get readable method names."""
    name = route.name.rstrip("_")
    module = getattr(route.endpoint, "__module__", "").rpartition(".")[2]
    return OPERATION_IDS.get(f"{module}.{name}") or OPERATION_IDS.get(name, name)


def _per_method_ids(schema: dict[str, Any]) -> None:
    """A route serving several methods (a proxy) has one id: give each method its own
    (``preview_get``, ``preview_post``) so ids stay unique."""
    for item in schema.get("paths", {}).values():
        ids = [op.get("operationId") for op in item.values() if isinstance(op, dict)]
        for method, op in item.items():
            if isinstance(op, dict) and ids.count(op.get("operationId")) > 1:
                op["operationId"] = f"{op['operationId']}_{method}"


def _add_bench_routes(app: FastAPI) -> None:
    @app.post("/_bench/echo", response_model=ActionResponse, include_in_schema=False)
    async def echo(request: Request, body: ActionRequest | None = None) -> Response:
        args = from_wire(body.args, where="args") if body is not None else []
        return json_response({"output": args[0] if args else None})


def _override_openapi(app: FastAPI) -> None:
    """Validation errors are 400s in our error shape, not FastAPI's 422s."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        components.setdefault(
            "ErrorBody", ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        )
        for item in schema.get("paths", {}).values():
            for op in item.values():
                responses = op.get("responses", {})
                responses.pop("422", None)
        _per_method_ids(schema)
        if app.state.settings.token:
            components_root = schema["components"]
            components_root["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
