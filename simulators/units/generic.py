"""The model for any tag no process model knows: a noisy first-order signal centred in the
tag's normal band (between its warning limits), vectorised over all such tags of a unit.

Band, from the tag's limits: [warning_low, warning_high] when both are set; a missing side
is taken from the alarm limit; with a single limit the signal sits a little inside it; with
none, it hovers around 0. Booleans read 0 (false), integers are rounded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from controltower.site import DataType, Limits, Tag
from simulators.units.base import NOISE_CLIP, BatchState, Noise, Phase, Recipe

# Fractions of the band's half-width: slow wander, measurement noise. With the clip, the
# reading stays within 0.28 half-widths of the centre.
_WANDER, _NOISE = 0.06, 0.02
_WANDER_TAU_S, _LAG_TAU_S = 120.0, 20.0


def operating_band(limits: Limits) -> tuple[float, float]:
    """(centre, half-width) of the band a generic signal lives in."""
    low = limits.warning_low if limits.warning_low is not None else limits.alarm_low
    high = limits.warning_high if limits.warning_high is not None else limits.alarm_high
    if low is not None and high is not None:
        return (low + high) / 2.0, (high - low) / 2.0
    if high is not None:
        half = max(abs(high) * 0.1, 1.0)
        return high - 2.0 * half, half
    if low is not None:
        half = max(abs(low) * 0.1, 1.0)
        return low + 2.0 * half, half
    return 0.0, 1.0


class GenericUnit:
    """Generic signals for `tags` (full Tag configs); one batch phase, "running"."""

    recipe: Recipe = (Phase("running", 1800.0),)

    def __init__(self, tags: Sequence[Tag], rng: np.random.Generator):
        self.tags = tuple(t.id for t in tags)
        self._noise = Noise(rng)
        bands = np.array([operating_band(t.limits) for t in tags], dtype=np.float64).reshape(-1, 2)
        self._centre, self._half = bands[:, 0], bands[:, 1]
        self._is_bool = np.array([t.data_type == DataType.BOOL for t in tags])
        self._is_int = np.array([t.data_type == DataType.INT for t in tags])
        self._wander = np.zeros(len(tags))
        self._signal = np.zeros(len(tags))  # lagged wander, in half-widths

    def step(self, dt_s: float, batch: BatchState) -> np.ndarray:
        n = len(self.tags)
        z = self._noise.draw(2 * n)
        a = math.exp(-dt_s / _WANDER_TAU_S)
        self._wander = np.clip(
            self._wander * a + _WANDER * math.sqrt(1.0 - a * a) * z[:n],
            -NOISE_CLIP * _WANDER,
            NOISE_CLIP * _WANDER,
        )
        self._signal += (self._wander - self._signal) * (1.0 - math.exp(-dt_s / _LAG_TAU_S))
        values = self._centre + self._half * (self._signal + _NOISE * z[n:])
        values = np.where(self._is_int, np.round(values), values)
        return np.where(self._is_bool, 0.0, values)
