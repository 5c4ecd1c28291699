"""The demo's simulated plant as the screen and the API may touch it: inject a fault and watch
detection happen. Only `controltower demo` has one (it runs the simulator in its own process);
a tower watching a real plant has none, and these routes and the panel do not exist there.

    GET  /api/simulation                 {"sensor_kinds", "process_kinds", "tags": [...],
                                          "units": [{"path", "kind", "process_kinds"}],
                                          "faults": [ground-truth rows, newest first]}
    POST /api/simulation/faults          body {"target", "kind", "duration_s", "magnitude"?, "period_s"?}
                                         -> 201 {"fault": {...}}; 400 naming what is wrong

`target` is a full tag id (sensor faults: spike, drift, stuck, bias, noise, dropout,
oscillation) or a unit path site.area.line.unit (process faults: cooling_failure,
feed_pump_failure, contamination, vacuum_leak, each for the unit kinds that have it); see
simulators/README.md for the kinds and magnitudes. Every injection goes to the simulator's
ground truth, as one from `controltower inject` does, and to the audit trail
(`simulation.inject`); with authentication on it needs the `simulation.inject` permission.

The simulator ticks on the demo's event loop while the web server answers from its own thread:
an injection is handed to the loop (`run_coroutine_threadsafe`) and waited for, so the plant is
only ever touched from the loop.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, current_app, has_app_context

from controltower.api import BadParameter, _body, _error, _json
from controltower.site import PROCESS_FAULT_UNIT_KINDS, SENSOR_FAULT_KINDS
from controltower.websecurity import NotAllowed, acting_user, audit_record

if TYPE_CHECKING:
    from simulators.faults import Fault
    from simulators.service import SimulatorService

EXTENSION = "controltower_demo_plant"
INJECT_TIMEOUT_S = 5.0
MAX_DURATION_S = 24 * 3600.0


class DemoPlant:
    """Fault injection into `simulator`, whose ticks run on `loop`."""

    def __init__(self, simulator: SimulatorService, loop: asyncio.AbstractEventLoop):
        self.simulator = simulator
        self.loop = loop

    def catalog(self) -> dict[str, Any]:
        """What can be injected where: the kinds, the tags, the units with their process faults."""
        plant = self.simulator.plant
        units = []
        for unit in plant.units:
            kind = unit.config.kind or ""
            units.append({"path": unit.path, "name": unit.config.name or unit.unit, "kind": kind,
                          "process_kinds": [k for k, kinds in PROCESS_FAULT_UNIT_KINDS.items() if kind in kinds]})
        return {"sensor_kinds": list(SENSOR_FAULT_KINDS), "process_kinds": list(PROCESS_FAULT_UNIT_KINDS),
                "tags": list(plant.tag_ids), "units": units}

    def faults(self, limit: int = 50) -> list[dict[str, Any]]:
        """The ground truth so far (scheduled and injected faults that started), newest first."""
        from simulators.faults import read_ground_truth

        path = self.simulator.ground_truth_path
        if not path.exists():
            return []
        frame = read_ground_truth(path).sort("start", descending=True).head(limit)
        return [{k: (v.isoformat().replace("+00:00", "Z") if hasattr(v, "isoformat") else v) for k, v in row.items()}
                for row in frame.iter_rows(named=True)]

    def inject(self, target: str, kind: str, duration_s: float, magnitude: float = 0.0,
               period_s: float = 60.0) -> Fault:
        """Start the fault now, on the simulator's loop; ValueError (from the plant) naming a bad
        target, kind or number."""
        async def on_loop() -> Fault:
            return self.simulator.inject(target, kind, duration_s, magnitude, period_s=period_s)

        if _on(self.loop):
            raise RuntimeError("DemoPlant.inject is for other threads; on the loop, call the simulator")
        return asyncio.run_coroutine_threadsafe(on_loop(), self.loop).result(timeout=INJECT_TIMEOUT_S)


def _on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def has_demo_plant() -> bool:
    """True on a server with a demo plant (the screen then shows its panel in the navigation)."""
    return has_app_context() and current_app.extensions.get(EXTENSION) is not None


def fault_json(fault: Fault) -> dict[str, Any]:
    return {"target": fault.target, "kind": str(fault.kind), "start": fault.start.isoformat().replace("+00:00", "Z"),
            "end": fault.end.isoformat().replace("+00:00", "Z"), "magnitude": fault.magnitude,
            "period_s": fault.period_s, "tags": list(fault.tags)}


def inject_from(plant: DemoPlant, body: dict[str, Any]) -> Fault:
    """Validate a request body, inject, audit; BadParameter naming the field (the API and the
    screen's panel both come through here)."""
    user = acting_user("simulation.inject", body.get("user"))
    target, kind = body.get("target"), body.get("kind")
    if not isinstance(target, str) or not target:
        raise BadParameter("target: required, a tag id (sensor fault) or a unit path site.area.line.unit (process fault)")
    if not isinstance(kind, str) or not kind:
        raise BadParameter("kind: required, a sensor or process fault kind")
    numbers = {}
    for name, default in (("duration_s", None), ("magnitude", 0.0), ("period_s", 60.0)):
        value = body.get(name, default)
        if value is None:
            raise BadParameter(f"{name}: required, in simulated seconds")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise BadParameter(f"{name}: a finite number, got {value!r}")
        numbers[name] = float(value)
    if not 0 < numbers["duration_s"] <= MAX_DURATION_S:
        raise BadParameter(f"duration_s: between 0 and {MAX_DURATION_S:g} simulated seconds, got {numbers['duration_s']:g}")
    try:
        fault = plant.inject(target, kind, numbers["duration_s"], numbers["magnitude"], numbers["period_s"])
    except ValueError as exc:
        raise BadParameter(str(exc)) from None
    audit_record(user or "demo", "simulation.inject", target, new=fault_json(fault),
                 reason=f"{kind} for {numbers['duration_s']:g} s, magnitude {numbers['magnitude']:g}")
    return fault


def register_demo_plant_api(server: Flask, plant: DemoPlant) -> Blueprint:
    server.extensions[EXTENSION] = plant
    bp = Blueprint("controltower_demo_plant", __name__)

    @bp.get("/api/simulation")
    def catalog() -> Response:
        acting_user("view")
        return _json(plant.catalog() | {"faults": plant.faults()})

    @bp.post("/api/simulation/faults")
    def inject() -> Response:
        return _json({"fault": fault_json(inject_from(plant, _body()))}, 201)

    @bp.errorhandler(BadParameter)
    def bad_parameter(exc: BadParameter) -> Response:
        return _error(400, str(exc))

    @bp.errorhandler(NotAllowed)
    def not_allowed(exc: NotAllowed) -> Response:
        return _error(exc.status, exc.message)

    server.register_blueprint(bp)
    return bp
