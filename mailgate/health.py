"""The metrics mailgate counts, served as ``GET /metrics`` by :mod:`mailgate.web`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()
MESSAGES = Counter("mailgate_messages", "Inbound mail by outcome", ["action"], registry=REGISTRY)
INGEST_SECONDS = Histogram(
    "mailgate_ingest_seconds", "Time to store and process one inbound mail", registry=REGISTRY
)
DELIVERIES = Counter(
    "mailgate_deliveries", "Outbound delivery attempts by result", ["result"], registry=REGISTRY
)
