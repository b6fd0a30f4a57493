"""The HTTP server: the HTTP contract of docs/http.md on FastAPI + uvicorn.

``create_app(engine, token=..., max_body=...)`` builds the application;
``run_server(registry, bind=..., port=...)`` (blocking) or ``await serve(engine,
settings)`` runs it. Settings come from ``AGENTVM_*`` (see :class:`ServerSettings`).
"""

from .app import create_app
from .run import load_registry, run_server, serve
from .settings import InsecureBindError, ServerSettings, check_bind

__all__ = [
    "InsecureBindError",
    "ServerSettings",
    "check_bind",
    "create_app",
    "load_registry",
    "run_server",
    "serve",
]
