"""OpenAI-compatible HTTP server over the Rust engine's continuous-batching scheduler.

``python -m nanochat_ternary.serve [--model NAME|PATH] [--host 127.0.0.1] [--port 8000]
[--api-key KEY] [--parallel N] [--max-queue M] [--ctx C]``; see ``create_app`` for the ASGI app.
Needs the ``serve`` extra (``pip install 'nanochat-ternary[serve]'``: FastAPI, uvicorn, Jinja2).
"""

from .app import ServerConfig, create_app
from .engine import BatchEngine, Overloaded, RequestError

__all__ = ["BatchEngine", "Overloaded", "RequestError", "ServerConfig", "create_app"]
