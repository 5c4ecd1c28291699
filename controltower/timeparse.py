"""Times given by people: ISO-8601 (`2026-11-29T10:00:00Z`; no zone means UTC) or relative to
now (`-10m`, `10m`, `2h`, `-1d`, `now`), for the CLI and the API."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """A UTC datetime; ValueError naming the text when it is neither form."""
    now = now or datetime.now(UTC)
    text = text.strip()
    if text.lower() == "now":
        return now
    try:
        match = _RELATIVE.match(text)
        if match:
            return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
        parsed = datetime.fromisoformat(text)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: a duration or time beyond years 1..9999
        raise ValueError(
            f"{text!r} is not a time: use ISO-8601 (2026-11-29T10:00:00Z) or a duration before now (-10m, 2h, 1d)"
        ) from None
