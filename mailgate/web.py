"""mailgate's HTTP listener: ``/metrics``, ``/healthz`` and the vault's ``/secret/<token>``.

aiohttp's server on the daemon's event loop, beside the SMTP listener: HTTP parsing is a
maintained library's job. Every response says not to keep, frame or refer it
(:func:`guarded`), and its Content-Security-Policy allows no script, style or request but
the page's own (a nonce per response for the reveal page's inline parts).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mailgate.health import REGISTRY

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[str | None]]  # None when healthy, else the problem
Routes = Callable[[web.Application], None]


def csp(nonce: str | None) -> str:
    """Nothing from anywhere; with a nonce, the page's own inline style and script."""
    own = f"'nonce-{nonce}'" if nonce else "'none'"
    return (
        f"default-src 'none'; style-src {own}; script-src {own}; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


def new_nonce() -> str:
    """A fresh CSP nonce for one response's inline style and script; the response that
    uses it sets its own ``Content-Security-Policy`` with :func:`csp`."""
    return secrets.token_urlsafe(16)


@web.middleware
async def guarded(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The headers every answer carries, also errors: no cache, no referrer, no frame."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = web.Response(status=exc.status, text=f"{exc.reason.lower()}\n")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Content-Security-Policy", csp(None))
    return response


def make_app(healthy: HealthCheck, extra: Routes | None = None) -> web.Application:
    """The application: metrics and health, plus ``extra`` routes (the vault's pages)."""

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def health(request: web.Request) -> web.Response:
        problem = await healthy()
        if problem is None:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=f"{problem}\n")

    app = web.Application(middlewares=[guarded], client_max_size=64 * 1024)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", health)
    if extra is not None:
        extra(app)
    return app


async def start_http(
    host: str, port: int, healthy: HealthCheck, extra: Routes | None = None
) -> tuple[web.AppRunner, int]:
    """Serve on the running loop; the runner (``await runner.cleanup()`` stops it) and the
    bound port."""
    # No access log: a line per request would put the one-time tokens of /secret/ in it.
    runner = web.AppRunner(make_app(healthy, extra), access_log=None, shutdown_timeout=5)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("metrics and health on http://%s:%s/metrics and /healthz", host, bound)
    return runner, bound
