"""Prometheus metrics of one control tower, in a registry of its own (so several instances,
as in tests, never share counters). Served at /metrics.

Per source (label `source`): samples received (`controltower_samples_in`, counted as the pipeline
takes each batch; `controltower_source_samples`, as the source decoded them), batches emitted,
connected, reconnects, payloads rejected per reason, protocol events (Sparkplug births, deaths,
sequence_gaps, rebirths_requested...), stale (a connection lost, gap open), tags stale, gaps and
gap seconds, age of the last sample. Pipeline: batches queued for the consumers and (without the
spool) for the historian, samples stored, historian write latency and errors; spool: pending
batches and bytes, oldest age, dropped batches. Detection: detector latency, alerts raised and active.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

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
        self.samples_stored = Counter(
            "controltower_samples_stored", "Samples the historian stored", registry=self.registry
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

    def watch_queues(self, depths: Callable[[], dict[str, int]]) -> None:
        """Report the pipeline's in-memory queues (queue name -> batches waiting) at each scrape."""
        self.registry.register(_QueueCollector(depths))

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
        samples = CounterMetricFamily("controltower_source_samples", "Samples decoded, per source", labels=["source"])
        batches = CounterMetricFamily("controltower_source_batches", "Batches emitted, per source", labels=["source"])
        events = CounterMetricFamily(
            "controltower_source_events",
            "Protocol events per source, e.g. Sparkplug births, deaths, sequence_gaps, rebirths_requested",
            labels=["source", "event"],
        )
        stale = GaugeMetricFamily("controltower_source_stale", "1 while the source's connection is lost and its tags stale",
                                  labels=["source"])
        stale_tags = GaugeMetricFamily("controltower_source_stale_tags", "Tags stale because the connection is lost",
                                       labels=["source"])
        gaps = CounterMetricFamily("controltower_source_gaps", "Connection gaps closed (see gaps.jsonl)", labels=["source"])
        gap_seconds = CounterMetricFamily("controltower_source_gap_seconds", "Total length of the closed gaps",
                                          labels=["source"])
        age = GaugeMetricFamily("controltower_source_last_sample_age_seconds", "Seconds since the source last emitted",
                                labels=["source"])
        now = datetime.now(UTC)
        for h in self._sources():
            connected.add_metric([h.name], 1.0 if h.connected else 0.0)
            reconnects.add_metric([h.name], h.reconnects)
            for reason, count in h.rejected.items():
                rejected.add_metric([h.name, reason], count)
            samples.add_metric([h.name], h.samples_in)
            batches.add_metric([h.name], h.batches_out)
            for event, count in h.events.items():
                events.add_metric([h.name, event], count)
            stale.add_metric([h.name], 0.0 if h.stale_since is None else 1.0)
            stale_tags.add_metric([h.name], h.stale_tags)
            gaps.add_metric([h.name], h.gaps)
            gap_seconds.add_metric([h.name], h.gap_seconds)
            if h.last_sample_at is not None:
                age.add_metric([h.name], (now - h.last_sample_at).total_seconds())
        yield from (connected, reconnects, rejected, samples, batches, events, stale, stale_tags, gaps, gap_seconds, age)


class _QueueCollector:
    def __init__(self, depths: Callable[[], dict[str, int]]):
        self._depths = depths

    def collect(self):
        depth = GaugeMetricFamily("controltower_queue_batches", "Batches waiting in a pipeline queue", labels=["queue"])
        for name, value in self._depths().items():
            depth.add_metric([name], value)
        yield depth


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
