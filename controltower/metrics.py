"""Prometheus metrics of one control tower, in a registry of its own (so several instances,
as in tests, never share counters). Served at /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from collector.sources import SourceHealth


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.samples_in = Counter(
            "controltower_samples_in", "Samples received, per source", ["source"], registry=self.registry
        )
        self.alerts_raised = Counter(
            "controltower_alerts_raised", "Alerts raised, per detector and severity", ["detector", "severity"],
            registry=self.registry,
        )
        self.alerts_active = Gauge("controltower_alerts_active", "Alerts active now", registry=self.registry)
        self.historian_write_seconds = Histogram(
            "controltower_historian_write_seconds", "Time to store one batch in the historian",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.historian_write_errors = Counter(
            "controltower_historian_write_errors", "Batches the historian failed to store (retried)",
            registry=self.registry,
        )
        self.detect_seconds = Histogram(
            "controltower_detect_seconds", "Time to run the detectors over one batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=self.registry,
        )

    def watch_sources(self, sources: Callable[[], Iterable[SourceHealth]]) -> None:
        """Report the sources' own health counters at each scrape (no copy to keep in step)."""
        self.registry.register(_SourceHealthCollector(sources))

    def watch_spool(self, spool_health: Callable[[], dict | None]) -> None:
        """Report the store-and-forward spool (pending, dropped, age) at each scrape."""
        self.registry.register(_SpoolCollector(spool_health))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SourceHealthCollector:
    def __init__(self, sources: Callable[[], Iterable[SourceHealth]]):
        self._sources = sources

    def collect(self):
        connected = GaugeMetricFamily("controltower_source_connected", "1 when the source is connected", labels=["source"])
        reconnects = CounterMetricFamily("controltower_source_reconnects", "Reconnections per source", labels=["source"])
        rejected = CounterMetricFamily(
            "controltower_payloads_rejected",
            "Payloads set aside because they could not be decoded, per source and reason",
            labels=["source", "reason"],
        )
        for h in self._sources():
            connected.add_metric([h.name], 1.0 if h.connected else 0.0)
            reconnects.add_metric([h.name], h.reconnects)
            for reason, count in h.rejected.items():
                rejected.add_metric([h.name, reason], count)
        yield from (connected, reconnects, rejected)


class _SpoolCollector:
    def __init__(self, spool_health: Callable[[], dict | None]):
        self._spool_health = spool_health

    def collect(self):
        health = self._spool_health()
        if health is None:
            return
        yield GaugeMetricFamily("controltower_spool_pending_batches", "Batches on disk not yet stored by the historian",
                                value=health["pending_batches"])
        yield GaugeMetricFamily("controltower_spool_pending_bytes", "Bytes on disk not yet stored by the historian",
                                value=health["pending_bytes"])
        yield GaugeMetricFamily("controltower_spool_oldest_pending_age_seconds", "Age of the oldest batch not yet stored",
                                value=health["oldest_pending_age_s"] or 0.0)
        yield CounterMetricFamily("controltower_spool_dropped_batches", "Batches dropped by the overflow policy",
                                  value=health["dropped_batches"])
