"""The simulator as a service: a Plant ticking in wall-clock time, served over OPC-UA and
MQTT, with faults from the config and injected at run time, all in the ground truth.

    service = SimulatorService(site, data_dir=Path("data"))
    await service.start()
    await service.run(60)      # 60 wall-clock seconds; None: until cancelled
    await service.stop()

`simulate(...)` is what `controltower simulate` runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

from controltower.site import SimulationConfig, SiteConfig
from simulators.batch_events import BatchEvent, BatchTransitions
from simulators.clock import utc_now
from simulators.faults import Fault
from simulators.mqtt_publisher import InjectCommand, PlantMqttPublisher, PublisherStats
from simulators.opcua_server import PlantOpcUaServer
from simulators.plant import Plant

log = logging.getLogger(__name__)

_FROM_CONFIG: Any = object()  # default of the url arguments: take the url from the site's simulation section
# Words that disable a server when given as its url override (CLI: --opcua-url none).
_DISABLED = {"", "none", "off", "disabled"}
_STOP_TIMEOUT_S = 5.0


class SimulatorService:
    """Runs `site`'s plant and serves it.

    opcua_url / mqtt_url: override the config's urls; None disables that server.
    speed: simulated seconds per wall-clock second (default: config). seed: default config.
    start: simulated time at plant start (default: the wall-clock time `run` starts ticking).
    The ground truth is `simulation.ground_truth_path`, resolved under `data_dir`.
    """

    def __init__(
        self,
        site: SiteConfig,
        *,
        data_dir: Path,
        opcua_url: str | None = _FROM_CONFIG,
        mqtt_url: str | None = _FROM_CONFIG,
        speed: float | None = None,
        seed: int | None = None,
        start: datetime | None = None,
    ):
        self.site = site
        self.config: SimulationConfig = site.simulation or SimulationConfig()
        self.data_dir = Path(data_dir)
        self.opcua_url = self.config.opcua_url if opcua_url is _FROM_CONFIG else opcua_url
        self.mqtt_url = self.config.mqtt_url if mqtt_url is _FROM_CONFIG else mqtt_url
        self.speed = self.config.speed if speed is None else float(speed)
        if not self.speed > 0:
            raise ValueError(f"speed must be positive, got {speed!r}")
        self.seed = self.config.seed if seed is None else int(seed)
        self.tick_s = self.config.tick_ms / 1000.0
        self.ground_truth_path = site.resolve_path(self.config.ground_truth_path, self.data_dir)
        self._start_time = start
        self._plant: Plant | None = None
        self._opcua: PlantOpcUaServer | None = None
        self._mqtt: PlantMqttPublisher | None = None
        self._running = False
        self._transitions = BatchTransitions()
        # The run's latest batch events, in order (the OPC-UA server keeps the unacknowledged ones).
        self.batch_events: deque[BatchEvent] = deque(maxlen=10_000)
        self.ticks = 0

    @property
    def plant(self) -> Plant:
        """The simulated plant (it stays readable after stop)."""
        if self._plant is None:
            raise RuntimeError("the simulator is not started")
        return self._plant

    @property
    def mqtt_stats(self) -> PublisherStats | None:
        return self._mqtt.stats if self._mqtt else None

    @property
    def mqtt(self) -> PlantMqttPublisher | None:
        return self._mqtt

    @property
    def opcua(self) -> PlantOpcUaServer | None:
        return self._opcua

    async def start(self) -> None:
        """Create the plant (first start only) and start the enabled servers (OPC-UA
        listening, MQTT connecting in the background)."""
        if self._running:
            return
        self._running = True
        try:
            first_start = self._plant is None
            if first_start:
                self._plant = Plant(
                    self.site, seed=self.seed, start=self._start_time, ground_truth=self.ground_truth_path
                )
            if self.opcua_url:
                # The server writes operator setpoints to the plant and shows its batch events.
                self._opcua = PlantOpcUaServer(self.site, url=self.opcua_url, plant=self._plant)
                await self._opcua.start()
            if first_start:
                if self._start_time is None:
                    # After the (slow) OPC-UA start, so at speed 1 simulated time tracks the wall clock.
                    self._plant.rebase(utc_now())
                self._transitions = BatchTransitions(self._plant.batch_info())
                self._transitions.update(self._plant.unit_states(), self._plant.now)
            if self.mqtt_url:
                self._mqtt = PlantMqttPublisher(
                    url=self.mqtt_url,
                    topic_prefix=self.config.mqtt_topic_prefix,
                    units=self._plant.units,
                    on_inject=self._inject_command,
                    default_payload=self.config.mqtt_payload,
                    payloads=self.config.mqtt_payloads,
                )
                await self._mqtt.start()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "simulator started: seed %d, speed %gx, tick %gs, OPC-UA %s, MQTT %s, ground truth %s",
            self.seed,
            self.speed,
            self.tick_s,
            self.opcua_url or "off",
            self.mqtt_url or "off",
            self.ground_truth_path,
        )

    async def stop(self) -> None:
        """Stop both servers; bounded in time (a stuck server is abandoned after a few seconds)."""
        mqtt, self._mqtt = self._mqtt, None
        opcua, self._opcua = self._opcua, None
        if mqtt is not None:
            await mqtt.stop(timeout_s=_STOP_TIMEOUT_S)
        if opcua is not None:
            try:
                await asyncio.wait_for(opcua.stop(), timeout=_STOP_TIMEOUT_S)
            except (TimeoutError, OSError) as exc:
                log.warning("OPC-UA simulator did not stop cleanly: %r", exc)
        self._running = False

    async def tick(self) -> None:
        """One tick: advance simulated time by tick * speed and publish the samples."""
        plant = self.plant
        frame = plant.step(self.tick_s * self.speed)
        states = plant.unit_states()
        events = self._transitions.update(states, plant.now)
        self.batch_events.extend(events)
        if self._opcua is not None:
            await self._opcua.publish(frame, states, events)
        if self._mqtt is not None:
            self._mqtt.publish(frame, states, events)
        self.ticks += 1

    async def run(self, duration_s: float | None = None) -> None:
        """Tick every `tick_ms` of wall-clock time for `duration_s` seconds (None: until
        cancelled). Starts the service if needed; does not stop it."""
        await self.start()
        plant = self.plant
        if self._start_time is None and self.ticks == 0 and not plant.elapsed_s and not plant.faults.injected:
            # Simulated time (and the scheduled faults) start when ticking starts, not at server start-up.
            plant.rebase(utc_now())
        loop_start = time.monotonic()
        deadline = None if duration_s is None else loop_start + duration_s
        next_tick = loop_start + self.tick_s
        while deadline is None or next_tick <= deadline:
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            await self.tick()
            next_tick += self.tick_s
            now = time.monotonic()
            if next_tick < now - self.tick_s:
                # Fell behind (a slow machine): skip the missed ticks rather than burst them.
                next_tick = now
        if deadline is not None:
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    def inject(
        self, target: str, kind: str, duration_s: float, magnitude: float = 0.0, *, period_s: float = 60.0
    ) -> Fault:
        """Start a fault now (simulated time) on a tag (sensor fault) or a unit path (process
        fault); see Plant.inject."""
        return self.plant.inject(target, kind, duration_s, magnitude, period_s=period_s)

    def _inject_command(self, command: InjectCommand) -> Fault:
        return self.inject(
            command.target, command.kind, command.duration_s, command.magnitude, period_s=command.period_s
        )


async def simulate(site: SiteConfig, *, data_dir: Path, duration_s: float | None, **overrides: Any) -> None:
    """Run the simulator for `duration_s` wall-clock seconds (None: until cancelled, e.g. Ctrl-C),
    then stop it. Overrides: opcua_url, mqtt_url, speed, seed, start; an override that is None
    means "not given" (use the config); a url of "none"/"off" disables that server."""
    unknown = set(overrides) - {"opcua_url", "mqtt_url", "speed", "seed", "start"}
    if unknown:
        raise TypeError(f"simulate() got unknown overrides {sorted(unknown)}")
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    for key in ("opcua_url", "mqtt_url"):
        if isinstance(kwargs.get(key), str) and kwargs[key].strip().lower() in _DISABLED:
            kwargs[key] = None
    service = SimulatorService(site, data_dir=data_dir, **kwargs)
    try:
        await service.run(duration_s)
    finally:
        await service.stop()
