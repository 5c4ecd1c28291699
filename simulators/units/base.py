"""The contract every unit process model follows, and the small control-engineering parts
they are built from (setpoint ramps, first-order lags, PI controllers, bounded noise).

Every random disturbance here is bounded (innovations clipped at a few sigma, slow
disturbances clipped to their band): "never crosses a warning limit in normal operation"
must hold for any seed, not just for likely ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

# Measurement and process noise are clipped here (in sigmas): a real transmitter has a
# bounded error band, and the normal-operation guarantee needs it.
NOISE_CLIP = 3.5


@dataclass(frozen=True)
class Phase:
    """One ISA-88 phase of a unit's recipe: its name and how long it runs (simulated seconds)."""

    name: str
    duration_s: float


Recipe = tuple[Phase, ...]


@dataclass(frozen=True)
class BatchState:
    """Where a unit is in its batch at a moment: batch id and number, phase, times into both."""

    batch_id: str
    number: int
    phase: str
    phase_index: int
    phase_elapsed_s: float
    batch_elapsed_s: float


class UnitModel(Protocol):
    """A unit's process model.

    `tags` are the unit's tag ids (short, e.g. "temperature") the model produces, in the
    order of the array `step` returns. `recipe` is the phase sequence of one batch.
    `step(dt_s, batch)` advances the process by `dt_s` simulated seconds (small: the plant
    sub-steps) and returns the sensor readings, shape (len(tags),), float64.
    """

    recipe: Recipe
    tags: tuple[str, ...]

    def step(self, dt_s: float, batch: BatchState) -> np.ndarray: ...


class KnownProcess(UnitModel, Protocol):
    """A model for a unit kind. `ENVELOPE` gives, per tag it knows, the band (low, high) its
    readings stay in during normal operation; the plant checks it against the tag's limits
    and falls back to the generic model for a tag whose limits would not hold it."""

    KIND: ClassVar[str]
    KNOWN_TAGS: ClassVar[tuple[str, ...]]
    ENVELOPE: ClassVar[dict[str, tuple[float, float]]]


class Noise:
    """Standard normal draws, clipped at NOISE_CLIP sigma, from one generator."""

    def __init__(self, rng: np.random.Generator):
        self._rng = rng

    def draw(self, n: int) -> np.ndarray:
        return np.clip(self._rng.standard_normal(n), -NOISE_CLIP, NOISE_CLIP)

    def uniform(self, n: int) -> np.ndarray:
        return self._rng.random(n)


def lag(value: float, target: float, dt_s: float, tau_s: float) -> float:
    """First-order lag towards `target` with time constant `tau_s`, exact for any step size."""
    return target + (value - target) * math.exp(-dt_s / tau_s)


class Ramp:
    """A setpoint that moves towards its target at a bounded rate (units per second):
    phase changes reach their new setpoints by ramps, never steps."""

    def __init__(self, value: float, rate: float):
        self.value = value
        self.rate = rate

    def toward(self, target: float, dt_s: float) -> float:
        step = self.rate * dt_s
        self.value += min(max(target - self.value, -step), step)
        return self.value


class Slow:
    """A slow bounded disturbance: an Ornstein-Uhlenbeck process (mean 0, stationary std
    `sigma`, correlation time `tau_s`) clipped to +-NOISE_CLIP sigma."""

    def __init__(self, sigma: float, tau_s: float, value: float = 0.0):
        self.sigma = sigma
        self.tau_s = tau_s
        self.value = value

    def step(self, dt_s: float, z: float) -> float:
        a = math.exp(-dt_s / self.tau_s)
        bound = NOISE_CLIP * self.sigma
        self.value = min(max(self.value * a + self.sigma * math.sqrt(1.0 - a * a) * z, -bound), bound)
        return self.value


class PI:
    """A PI controller, output = bias + kp*e + integral, clamped to [low, high]; the
    integral stops winding while the output is saturated in the same direction."""

    def __init__(
        self, kp: float, ki: float, low: float, high: float, bias: float = 0.0, integral: float = 0.0
    ):
        self.kp, self.ki, self.low, self.high, self.bias = kp, ki, low, high, bias
        self.integral = integral

    def update(self, error: float, dt_s: float) -> float:
        candidate = self.integral + self.ki * error * dt_s
        raw = self.bias + self.kp * error + candidate
        if self.low <= raw <= self.high or (raw > self.high and error < 0) or (raw < self.low and error > 0):
            self.integral = candidate
        return min(max(self.bias + self.kp * error + self.integral, self.low), self.high)


def index_of(tags: Sequence[str]) -> dict[str, int]:
    return {t: i for i, t in enumerate(tags)}
