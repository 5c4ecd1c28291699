r"""`controltower demo`: the whole product in one process on embedded defaults.

    simulated plant --OPC-UA--> OPC-UA source --\
                    --MQTT----> embedded broker --> MQTT source --> detectors --> alerts --> screen
                                                                \-> DuckDB historian --/

The plant is `config/demo-site.yaml`; its scheduled faults raise the first alert within a minute,
and the screen's demo plant panel (/simulator/) injects more.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from controltower.demo_plant import DemoPlant
from controltower.embedded_broker import EmbeddedBroker
from controltower.runtime import ControlTower
from controltower.site import LOOPBACK_HOSTS, SiteConfig, load_site_config

log = logging.getLogger(__name__)

def _demo_config() -> Path:
    """config/demo-site.yaml of the source tree (editable install), else of the working directory
    (the Docker image's /app)."""
    beside_package = Path(__file__).resolve().parents[1] / "config" / "demo-site.yaml"
    return beside_package if beside_package.exists() else Path.cwd() / "config" / "demo-site.yaml"


DEMO_CONFIG = _demo_config()


@dataclass(frozen=True)
class DemoOptions:
    port: int = 8050
    host: str = "127.0.0.1"
    data_dir: Path = Path("data/demo")
    duration_s: float | None = None
    seed: int | None = None
    speed: float | None = None
    mqtt_url: str | None = None  # an existing broker; None starts the embedded one
    mqtt_port: int = 1883
    opcua_port: int = 4840
    config: Path = DEMO_CONFIG


def point_sources_at(site: SiteConfig, *, opcua_url: str, mqtt_url: str) -> SiteConfig:
    """The same site with its sources (and simulation) aimed at these endpoints."""
    sources = [
        s.model_copy(update={"url": opcua_url if s.kind == "opcua" else mqtt_url}) for s in site.sources
    ]
    simulation = site.simulation.model_copy(update={"opcua_url": opcua_url, "mqtt_url": mqtt_url}) if site.simulation else None
    return site.model_copy(update={"sources": sources, "simulation": simulation})


async def run_demo(options: DemoOptions, *, on_ready=None) -> None:
    from simulators.service import SimulatorService

    site = load_site_config(options.config)
    if not site.screen.auth.enabled and options.host not in LOOPBACK_HOSTS:
        # Refused before anything starts (the screen would refuse it too, later).
        raise ValueError(f"--host {options.host}: the demo has no login (screen.auth.enabled: false in "
                         f"{options.config}), so it may only listen on a loopback address ({', '.join(LOOPBACK_HOSTS)})")
    broker = None if options.mqtt_url else EmbeddedBroker(port=options.mqtt_port)
    mqtt_url = options.mqtt_url or broker.url
    opcua_url = f"opc.tcp://127.0.0.1:{options.opcua_port}/controltower/sim"
    site = point_sources_at(site, opcua_url=opcua_url, mqtt_url=mqtt_url)
    options.data_dir.mkdir(parents=True, exist_ok=True)

    if broker is not None:
        await broker.start()
    simulator = SimulatorService(
        site, data_dir=options.data_dir, opcua_url=opcua_url, mqtt_url=mqtt_url, seed=options.seed, speed=options.speed
    )
    tower = None
    try:
        await simulator.start()
        tower = ControlTower(site, data_dir=options.data_dir)
        tower.demo_plant = DemoPlant(simulator, asyncio.get_running_loop())  # the screen's fault panel
        url = tower.start_screen(host=options.host, port=options.port)
        print(f"Demo control tower: {url}  (API {url}/api/health, metrics {url}/metrics); Ctrl-C to stop", flush=True)
        if not site.screen.auth.enabled:
            print("No login in the demo (screen.auth.enabled: false in the demo site): anyone on this machine can "
                  "act on alarms. `controltower run` requires users (see docs/security.md).", flush=True)
        if on_ready is not None:
            on_ready(tower, simulator)
        sim_task = asyncio.create_task(simulator.run(None), name="simulator")
        try:
            await tower.run(options.duration_s)
        finally:
            sim_task.cancel()
            await asyncio.gather(sim_task, return_exceptions=True)
    finally:
        if tower is not None:
            tower.close()
        await simulator.stop()
        if broker is not None:
            await broker.stop()
