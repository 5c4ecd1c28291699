"""Batch events over MQTT: one JSON object per transition on each unit's batch-event topic
(`batch_event_topic` of the MQTT source, e.g. `plant/{site}/{area}/{line}/{unit}/_batch`):

    {"ts": "2026-11-29T10:00:00Z", "transition": "phase_change", "batch_id": "FILLER1-0001",
     "phase": "filling", "previous_phase": "start_up", "product": "...", "recipe": "...", "sequence": 12}

`ts` (ISO-8601, naive = UTC, or epoch seconds or milliseconds), `transition` (batch_start, phase_change,
batch_end) and `batch_id` are required, `phase` too except for batch_end; the unit is the
topic's (a `unit` field in the payload is not trusted over it). A payload that breaks these
rules raises `BatchEventError` (its `reason` is the counter label), which the source counts and
writes to the dead-letter file like any other payload it cannot use.
"""

from __future__ import annotations

import json
from datetime import datetime

from controltower.batch_events import batch_events_frame
from controltower.site import MqttSourceConfig, TagInfo

ANNOUNCED = ("batch_start", "phase_change", "batch_end")


class BatchEventError(ValueError):
    """Why a batch-event payload was set aside; `reason` is the short counter label."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class BatchEventDecoder:
    """Batch-event topics of the units whose tags a source collects, and their payloads decoded."""

    def __init__(self, config: MqttSourceConfig, tags: list[TagInfo]):
        self.unit_by_topic: dict[str, str] = {}
        if config.batch_event_topic:
            for t in tags:
                topic = config.batch_event_topic.format(
                    prefix=config.topic_prefix, site=t.site, area=t.area, line=t.line, unit=t.unit)
                self.unit_by_topic[topic] = t.unit_id
        self.rows: list[dict[str, object]] = []

    def subscriptions(self) -> list[str]:
        return list(self.unit_by_topic)

    def decode(self, topic: str, payload: bytes) -> bool:
        """Keep the event of a message on a batch-event topic and return True; False for another
        topic. Raise BatchEventError for a payload that is not a valid event."""
        unit = self.unit_by_topic.get(topic)
        if unit is None:
            return False
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise BatchEventError("invalid_batch_event", f"batch event is not JSON: {str(exc)[:200]}") from None
        if not isinstance(doc, dict):
            raise BatchEventError("invalid_batch_event", f"batch event is a JSON {type(doc).__name__}, expected an object")
        transition = doc.get("transition")
        if transition not in ANNOUNCED:
            raise BatchEventError("invalid_batch_event",
                                  f"transition is {str(transition)[:40]!r}, expected one of {', '.join(ANNOUNCED)}")
        batch_id, phase = doc.get("batch_id"), doc.get("phase")
        if not isinstance(batch_id, str) or not batch_id:
            raise BatchEventError("invalid_batch_event", "batch_id is missing or not a non-empty string")
        if transition != "batch_end" and (not isinstance(phase, str) or not phase):
            raise BatchEventError("invalid_batch_event", f"phase is missing or not a non-empty string ({transition})")
        self.rows.append({
            "ts": _event_time(doc.get("ts")), "unit_id": unit, "batch_id": batch_id,
            "phase": phase if isinstance(phase, str) else None, "transition": transition,
            "product": _text(doc.get("product")), "recipe": _text(doc.get("recipe")),
        })
        return True

    def take(self):
        """The events decoded since the last call, as one frame (`controltower.batch_events`)."""
        rows, self.rows = self.rows, []
        return batch_events_frame(rows)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _event_time(raw: object) -> datetime:
    """The event's `ts`, read as a sample's time is (`collector.sources.mqtt`)."""
    from collector.sources.mqtt import PayloadError, _parse_time  # mqtt imports this module

    try:
        return _parse_time(raw, "ts")
    except PayloadError as exc:
        raise BatchEventError("invalid_batch_event", str(exc)) from None
