"""Simulated time helpers: one ISO-8601 format for every timestamp the simulator writes
(MQTT payloads, the ground-truth CSV), so consumers parse them all the same way."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """Wall-clock now, timezone-aware UTC."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A datetime in UTC; a naive one is taken as UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso_utc(moment: datetime) -> str:
    """`2024-05-01T08:00:40.500000Z`: UTC, always with microseconds and a `Z`."""
    return as_utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
