"""Prometheus metrics, one registry per server (tests run several in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("deskmate_connections", "Open websocket connections",
                                 ["socket"], registry=r)
        self.sessions_started = Counter("deskmate_sessions_started", "Sessions created or resumed",
                                        ["kind"], registry=r)
        self.messages = Counter("deskmate_messages", "Customer messages stored",
                                ["duplicate"], registry=r)
        self.turns = Counter("deskmate_turns", "Customer turns answered", registry=r)
        self.turn_seconds = Histogram(
            "deskmate_turn_seconds", "Time from picking up a turn to storing its replies",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.ack_seconds = Histogram(
            "deskmate_ack_seconds", "Time from receiving a message to its ack",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=r)
        self.errors = Counter("deskmate_errors", "Error frames sent and internal errors",
                              ["code"], registry=r)
        self.redis_up = Gauge("deskmate_redis_up", "1 when the last Redis health check passed",
                              registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
