"""Prometheus metrics, one registry per server (tests run several in one process).

Counters and histograms are per instance; sum them across instances in Prometheus.
The language model's queue and token count are read from the model when ``/metrics``
is scraped (the embedded engine exposes them; a remote server has its own metrics).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# A reason as the dialogue engine words it -> a label with few values.
HANDOFF_KINDS = (("customer asked", "asked"), ("negative", "negative"), ("not understood", "unclear"),
                 ("rule", "rule"), ("paused", "action"))


def handoff_kind(reason: str) -> str:
    """``asked``, ``negative``, ``unclear``, ``rule``, ``action`` or ``other``."""
    reason = reason.lower()
    return next((kind for words, kind in HANDOFF_KINDS if words in reason), "other")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("deskmate_connections", "Open websocket connections",
                                 ["socket"], registry=r)
        self.active_sessions = Gauge("deskmate_active_sessions",
                                     "Customer sockets attached to a conversation on this instance",
                                     registry=r)
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
        self.first_reply_seconds = Histogram(
            "deskmate_first_reply_seconds",
            "Time from a customer message's ack to the first text of the answer on that socket",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.handoffs = Counter("deskmate_handoffs", "Conversations the bot handed to a person",
                                ["reason"], registry=r)
        self.errors = Counter("deskmate_errors", "Error frames sent, refused handshakes and "
                              "internal errors", ["code"], registry=r)
        self.redis_up = Gauge("deskmate_redis_up", "1 when the last Redis health check passed",
                              registry=r)

    def turn_stored(self, seconds: float, handoff_reasons: Sequence[str]) -> None:
        """A turn's result was stored ``seconds`` after the turn was picked up, asking for a
        person for each of ``handoff_reasons``. Counted only then: the write can be refused
        (an agent took over mid-turn), and a refused handoff or answer never happened."""
        self.turn_seconds.observe(seconds)
        self.turns.inc()
        for reason in handoff_reasons:
            self.handoffs.labels(handoff_kind(reason)).inc()

    def watch_model(self, model: Any) -> None:
        """Expose the language model's queue and token count, read at each scrape."""
        if model is not None:
            self.registry.register(ModelCollector(model))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelCollector(Collector):
    """``deskmate_lm_active_requests``, ``deskmate_lm_waiting_requests`` and
    ``deskmate_lm_tokens_total`` (tokens/s = ``rate(deskmate_lm_tokens_total[1m])``), from
    whichever of ``active_count``, ``waiting_count`` and ``stats.tokens`` the model has."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for attr, name, doc in (
                ("active_count", "deskmate_lm_active_requests", "Generations the model is decoding"),
                ("waiting_count", "deskmate_lm_waiting_requests", "Generations queued for the model")):
            value = getattr(self.model, attr, None)
            if isinstance(value, int):
                yield GaugeMetricFamily(name, doc, value=value)
        tokens = getattr(getattr(self.model, "stats", None), "tokens", None)
        if isinstance(tokens, int):
            yield CounterMetricFamily("deskmate_lm_tokens", "Tokens the language model generated",
                                      value=tokens)

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        return iter(())  # read at scrape time only; nothing to check at registration
