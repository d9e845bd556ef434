"""The worker's HTTP API on Faust's web server (DESIGN.md "HTTP API of the worker", a contract).

``register_api(platform)`` is called by :func:`streams.app.create_platform` before the worker starts.

Routes: ``/livez``, ``/readyz`` (503 until table recovery finished).
"""

from __future__ import annotations

from typing import Any, Protocol

from faust.web import Request, Response, View

__all__ = ["register_api"]


class ApiPlatform(Protocol):
    """What the API needs from :class:`streams.app.Platform`."""

    app: Any

    def is_ready(self) -> bool: ...


def register_api(platform: ApiPlatform) -> None:
    """Add the API's views to ``platform.app``'s web server (call before the app starts)."""
    app = platform.app

    @app.page("/livez", name="livez")
    class Livez(View):
        """Liveness: the process and its event loop answer."""

        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/readyz", name="readyz")
    class Readyz(View):
        """Readiness: 200 once table recovery finished, 503 before."""

        async def get(self, request: Request) -> Response:
            if platform.is_ready():
                return self.json({"status": "ready"})
            return self.json({"status": "recovering"}, status=503)
