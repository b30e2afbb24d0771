"""Operability over HTTP: ``GET /metrics`` (Prometheus text) and ``GET /healthz``.

A deliberately tiny HTTP/1.0 server on the event loop: two read-only endpoints do not
justify a web framework, and it must never disturb the SMTP listener it runs beside.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
MESSAGES = Counter("mailgate_messages", "Inbound mail by outcome", ["action"], registry=REGISTRY)
INGEST_SECONDS = Histogram(
    "mailgate_ingest_seconds", "Time to store and process one inbound mail", registry=REGISTRY
)
DELIVERIES = Counter(
    "mailgate_deliveries", "Outbound delivery attempts by result", ["result"], registry=REGISTRY
)

HealthCheck = Callable[[], Awaitable[str | None]]  # None when healthy, else the problem


async def start_http(host: str, port: int, healthy: HealthCheck) -> asyncio.Server:
    """Serve /metrics and /healthz; returns the server (its socket tells the bound port)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else ""
            if parts[:1] != ["GET"]:
                status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path == "/metrics":
                status, body, kind = "200 OK", generate_latest(REGISTRY), CONTENT_TYPE_LATEST
            elif path == "/healthz":
                problem = await healthy()
                if problem is None:
                    status, body = "200 OK", b"ok\n"
                else:
                    status, body = "503 Service Unavailable", f"{problem}\n".encode()
                kind = "text/plain; charset=utf-8"
            else:
                status, body, kind = "404 Not Found", b"not found\n", "text/plain"
            head = f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    bound = server.sockets[0].getsockname()
    log.info("metrics and health on http://%s:%s/metrics and /healthz", bound[0], bound[1])
    return server
