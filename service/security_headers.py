"""Headers every response carries, whatever produced it (a route, an error handler or a
middleware that refused the request early):

- ``X-Content-Type-Options: nosniff``, so a browser never reads an answer as another type;
- ``Cache-Control: no-store`` unless the route chose a policy (the dashboard's static files, the
  API docs' assets): answers carry keys' secrets, results and problem details that no shared or
  browser cache should keep;
- ``Strict-Transport-Security`` when the request came over HTTPS. Behind a proxy that
  terminates TLS, uvicorn takes the scheme from ``X-Forwarded-Proto`` only when the proxy's
  address is trusted (``--forwarded-allow-ips``), so a client cannot forge it.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HSTS = "max-age=31536000"


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Cache-Control", "no-store")
                if https:
                    headers.setdefault("Strict-Transport-Security", HSTS)
            await send(message)

        await self.app(scope, receive, send_with_headers)
