"""A generated enterprise: any number of sites and lines, ISA-95 named, ready to simulate.

    site = build_enterprise(3, 22, seed=7)      # what `controltower simulate --sites 3 --lines 22` runs
    len(site.tag_table())                       # 1320

Naming (ISA-95: enterprise -> site -> area -> line -> unit -> tag), full tag ids
`site.area.line.unit.tag`, e.g. `lyon.usp.bio1.br102.dissolved_oxygen`:
  sites   lyon, basel, cork, durham, singapore, kundl, then site07, site08, ...
  areas   usp (upstream), ff (fill-finish), osd (oral solid dose), env (cleanroom HVAC), util (utilities)
  lines   the site's lines take the line types in turn (bioreactor, filling, tablet, freeze dryer,
          HVAC, WFI, bioreactor, ...), numbered per type: bio1, fill1, tab1, lyo1, ahu1, wfi1, bio2, ...
  units   bioreactor line n: br{n}01..br{n}03 (+ its suite's `room`); filling line n: filler{n}1..
          filler{n}3 + `room_b` and `room_c`; tablet line n: press{n}1..press{n}4 + `room`; freeze-dryer
          line n: fd{n}1..fd{n}3 + `room`; HVAC line n: room1..room5; WFI line n: loop1, loop2.
The structure depends only on the counts, never on the seed (so a scenario can name its tags);
the seed is the simulation seed, which picks every random signal.

Bindings: usp, osd and util lines are read over OPC-UA (`ns=2;s=<tag id>`, one source
`plant-opcua`, batch id node per unit); ff and env lines over MQTT (the simulator's topic per
unit, one field per tag, one source `plant-mqtt`). Limits come from the unit models' normal
bands (`ENVELOPE`), with room for the normal-operation promise (see simulators/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controltower.site import SiteConfig, parse_site_config

SITE_NAMES = (
    ("lyon", "Lyon plant"),
    ("basel", "Basel plant"),
    ("cork", "Cork plant"),
    ("durham", "Durham plant"),
    ("singapore", "Singapore plant"),
    ("kundl", "Kundl plant"),
)
AREA_NAMES = {
    "usp": "Upstream processing",
    "ff": "Fill-finish",
    "osd": "Oral solid dose",
    "env": "Cleanroom HVAC",
    "util": "Utilities",
}
OPCUA_URL = "opc.tcp://127.0.0.1:4840/controltower/sim"
MQTT_URL = "mqtt://127.0.0.1:1883"
TOPIC_PREFIX = "plant"


def _limits(
    al: float | None, wl: float | None, wh: float | None, ah: float | None, db: float
) -> dict[str, float]:
    out = {"alarm_low": al, "warning_low": wl, "warning_high": wh, "alarm_high": ah, "deadband": db}
    return {k: v for k, v in out.items() if v is not None}


# Per model kind: (tag id, description, engineering unit, limits). The limits hold the model's
# ENVELOPE inside the warning limits, and the alarm span is wide enough that the z-score's
# 1% floor keeps normal moves (ramps, phase changes) below its threshold.
TAGS: dict[str, tuple[tuple[str, str, str, dict[str, float]], ...]] = {
    "bioreactor": (
        ("temperature", "Broth temperature, jacket-controlled", "degC", _limits(35.0, 36.0, 38.0, 39.0, 0.2)),
        ("ph", "Broth pH, CO2 sparge and base addition", "pH", _limits(6.7, 6.8, 7.2, 7.3, 0.02)),
        (
            "dissolved_oxygen",
            "Dissolved oxygen, cascaded to agitation",
            "%sat",
            _limits(15.0, 25.0, 70.0, 85.0, 1.0),
        ),
        ("agitation", "Agitator speed", "rpm", _limits(None, None, 380.0, 420.0, 5.0)),
        ("pressure", "Headspace pressure", "barg", _limits(0.05, 0.1, 0.5, 0.6, 0.01)),
        ("feed_rate", "Feed pump flow", "L/h", _limits(-2.0, -1.0, 10.0, 12.0, 0.1)),
        (
            "air_flow",
            "Sparge air flow, DO cascade after agitation",
            "slpm",
            _limits(5.0, 10.0, 40.0, 80.0, 1.0),
        ),
        ("base_flow", "Base addition, pH loop", "mL/min", _limits(-20.0, -10.0, 150.0, 250.0, 2.0)),
        ("foam_level", "Foam probe, antifoam dosed at 25 %", "%", _limits(-10.0, -5.0, 50.0, 75.0, 1.0)),
        (
            "biomass",
            "Viable cell density, capacitance probe",
            "1e6 cells/mL",
            _limits(0.0, 1.0, 18.0, 22.0, 0.2),
        ),
    ),
    "tablet_press": (
        ("compression_force", "Main compression force", "kN", _limits(9.0, 10.0, 14.0, 15.0, 0.2)),
        ("tablet_weight", "Tablet weight, in-line check", "mg", _limits(237.5, 242.5, 257.5, 262.5, 0.5)),
        ("speed", "Turret speed", "rpm", _limits(20.0, 30.0, 70.0, 80.0, 1.0)),
        ("ejection_force", "Ejection force, lower punch", "N", _limits(150.0, 200.0, 550.0, 650.0, 5.0)),
    ),
    "filling_line": (
        ("fill_weight", "Fill weight, check-weigher", "g", _limits(1.94, 1.96, 2.04, 2.06, 0.002)),
        ("speed", "Filling speed", "vials/min", _limits(200.0, 250.0, 350.0, 400.0, 2.0)),
        (
            "room_dp",
            "Filling room differential pressure to the corridor",
            "Pa",
            _limits(10.0, 12.5, 25.0, 30.0, 0.3),
        ),
        *(
            (f"fill_weight_n{k}", f"Fill weight, needle {k} (mean of its vials)", "g",
             _limits(1.94, 1.96, 2.04, 2.06, 0.002))
            for k in range(1, 9)
        ),
        ("reject_rate", "Check-weigher rejects", "vials/min", _limits(None, None, 3.0, 6.0, 0.1)),
        ("particles_0_5um", "Grade A particles >= 0.5 um", "counts/m3", _limits(None, None, 2000.0, 3520.0, 20.0)),
        ("particles_5_0um", "Grade A particles >= 5.0 um", "counts/m3", _limits(None, None, 20.0, 29.0, 1.0)),
    ),
    "freeze_dryer": (
        ("shelf_temperature", "Shelf inlet temperature", "degC", _limits(-55.0, -50.0, 35.0, 40.0, 0.5)),
        (
            "product_temperature",
            "Product temperature, thermocouple probe",
            "degC",
            _limits(-55.0, -50.0, 35.0, 40.0, 0.5),
        ),
        (
            "chamber_pressure_cm",
            "Chamber pressure, capacitance manometer",
            "ubar",
            _limits(20.0, 40.0, 150.0, 200.0, 2.0),
        ),
        (
            "chamber_pressure_pirani",
            "Chamber pressure, Pirani gauge",
            "ubar",
            _limits(20.0, 40.0, 250.0, 300.0, 2.0),
        ),
        ("condenser_temperature", "Condenser temperature", "degC", _limits(-95.0, -85.0, -55.0, -50.0, 0.5)),
    ),
    "wfi_loop": (
        ("supply_temperature", "Loop supply temperature", "degC", _limits(80.0, 81.0, 85.0, 86.0, 0.1)),
        ("return_temperature", "Loop return temperature", "degC", _limits(79.0, 80.0, 84.5, 85.5, 0.1)),
        ("return_flow", "Return velocity", "m/s", _limits(1.0, 1.2, 2.2, 2.8, 0.02)),
        ("conductivity", "Conductivity, compensated to 25 degC", "uS/cm", _limits(0.05, 0.1, 1.0, 1.3, 0.02)),
        ("toc", "Total organic carbon", "ppb", _limits(1.0, 5.0, 300.0, 500.0, 5.0)),
        ("tank_level", "Storage tank level", "%", _limits(20.0, 30.0, 90.0, 95.0, 1.0)),
    ),
    "cleanroom_hvac": (
        ("temperature", "Room temperature", "degC", _limits(17.0, 18.0, 22.0, 23.0, 0.1)),
        ("humidity", "Room relative humidity", "%RH", _limits(30.0, 35.0, 55.0, 60.0, 1.0)),
        (
            "differential_pressure",
            "Differential pressure to the next lower grade",
            "Pa",
            _limits(8.0, 10.0, 25.0, 30.0, 0.3),
        ),
        (
            "supply_air_temperature",
            "AHU supply air temperature",
            "degC",
            _limits(10.0, 12.0, 20.0, 22.0, 0.2),
        ),
    ),
}


@dataclass(frozen=True)
class LineType:
    """How a line of one type is built: its area, id prefix, units (id template, kind, name)."""

    key: str
    area: str
    prefix: str
    name: str
    units: tuple[tuple[str, str, str], ...]  # (unit id template with {n}, kind, name)
    protocol: str  # "opcua" | "mqtt"


LINE_TYPES: tuple[LineType, ...] = (
    LineType(
        "bioreactor",
        "usp",
        "bio",
        "Bioreactor line",
        (
            ("br{n}01", "bioreactor", "Bioreactor 2000 L"),
            ("br{n}02", "bioreactor", "Bioreactor 2000 L"),
            ("br{n}03", "bioreactor", "Bioreactor 2000 L"),
            ("room", "cleanroom_hvac", "Suite room (grade C)"),
        ),
        "opcua",
    ),
    LineType(
        "filling",
        "ff",
        "fill",
        "Aseptic filling line",
        (
            ("filler{n}1", "filling_line", "Vial filler, 8 needles"),
            ("filler{n}2", "filling_line", "Vial filler, 8 needles"),
            ("filler{n}3", "filling_line", "Vial filler, 8 needles"),
            ("room_b", "cleanroom_hvac", "Filling room (grade B)"),
            ("room_c", "cleanroom_hvac", "Preparation room (grade C)"),
        ),
        "mqtt",
    ),
    LineType(
        "tablet",
        "osd",
        "tab",
        "Tablet line",
        (
            ("press{n}1", "tablet_press", "Rotary tablet press"),
            ("press{n}2", "tablet_press", "Rotary tablet press"),
            ("press{n}3", "tablet_press", "Rotary tablet press"),
            ("press{n}4", "tablet_press", "Rotary tablet press"),
            ("room", "cleanroom_hvac", "Compression room (grade D)"),
        ),
        "opcua",
    ),
    LineType(
        "freeze_dryer",
        "ff",
        "lyo",
        "Lyophilisation line",
        (
            ("fd{n}1", "freeze_dryer", "Freeze dryer, 20 m2"),
            ("fd{n}2", "freeze_dryer", "Freeze dryer, 20 m2"),
            ("fd{n}3", "freeze_dryer", "Freeze dryer, 20 m2"),
            ("room", "cleanroom_hvac", "Loading room (grade B)"),
        ),
        "mqtt",
    ),
    LineType(
        "hvac",
        "env",
        "ahu",
        "Air-handling unit",
        tuple((f"room{k}", "cleanroom_hvac", f"Cleanroom {k}") for k in range(1, 6)),
        "mqtt",
    ),
    LineType(
        "wfi",
        "util",
        "wfi",
        "WFI distribution",
        (
            ("loop1", "wfi_loop", "Hot WFI loop 1"),
            ("loop2", "wfi_loop", "Hot WFI loop 2"),
        ),
        "opcua",
    ),
)


def site_id(index: int) -> tuple[str, str]:
    """(id, name) of the site at 0-based `index`."""
    if index < len(SITE_NAMES):
        return SITE_NAMES[index]
    return f"site{index + 1:02d}", f"Site {index + 1}"


def enterprise_dict(sites: int, lines: int, *, seed: int = 42) -> dict[str, Any]:
    """The site file (as YAML would load it) of a generated enterprise; see the module docstring."""
    for name, value in (("sites", sites), ("lines", lines)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"enterprise {name} must be a whole number >= 1, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"enterprise seed must be an integer, got {seed!r}")  # noqa: TRY004
    out_sites = []
    for s in range(sites):
        sid, sname = site_id(s)
        areas: dict[str, list[dict[str, Any]]] = {}
        counts: dict[str, int] = {}
        for i in range(lines):
            kind = LINE_TYPES[i % len(LINE_TYPES)]
            n = counts[kind.key] = counts.get(kind.key, 0) + 1
            line_id = f"{kind.prefix}{n}"
            units = [
                _unit(
                    sid,
                    kind,
                    line_id,
                    template.format(n=n),
                    unit_kind,
                    f"{uname} {template.format(n=n).upper()}",
                )
                for template, unit_kind, uname in kind.units
            ]
            areas.setdefault(kind.area, []).append(
                {"id": line_id, "name": f"{kind.name} {n}", "units": units}
            )
        out_sites.append(
            {
                "id": sid,
                "name": sname,
                "areas": [{"id": a, "name": AREA_NAMES[a], "lines": ls} for a, ls in areas.items()],
            }
        )
    return {
        "enterprise": f"Generated Pharma ({sites} sites x {lines} lines)",
        "sites": out_sites,
        "sources": [
            {"kind": "opcua", "name": "plant-opcua", "url": OPCUA_URL, "publishing_interval_ms": 500},
            {"kind": "mqtt", "name": "plant-mqtt", "url": MQTT_URL, "qos": 1},
        ],
        "simulation": {
            "seed": seed,
            "tick_ms": 1000,
            "opcua_url": OPCUA_URL,
            "mqtt_url": MQTT_URL,
            "mqtt_topic_prefix": TOPIC_PREFIX,
            "faults": [],
        },
    }


def _unit(site: str, kind: LineType, line: str, unit: str, unit_kind: str, name: str) -> dict[str, Any]:
    path = f"{site}.{kind.area}.{line}.{unit}"
    tags = []
    for tag_id, description, eng_unit, limits in TAGS[unit_kind]:
        tag: dict[str, Any] = {
            "id": tag_id,
            "description": description,
            "unit": eng_unit,
            "limits": dict(limits),
        }
        if kind.protocol == "opcua":
            tag["opcua"] = {"node_id": f"ns=2;s={path}.{tag_id}"}
        else:
            tag["mqtt"] = {"topic": f"{TOPIC_PREFIX}/{site}/{kind.area}/{line}/{unit}", "field": tag_id}
        tags.append(tag)
    out: dict[str, Any] = {"id": unit, "name": name, "kind": unit_kind, "tags": tags}
    if kind.protocol == "opcua":
        out["batch_node_id"] = f"ns=2;s={path}.batch_id"
    return out


def build_enterprise(sites: int, lines: int, *, seed: int = 42) -> SiteConfig:
    """A validated SiteConfig of `sites` sites with `lines` lines each (see the module docstring).
    ValueError naming the argument when a count is not a whole number >= 1."""
    return parse_site_config(enterprise_dict(sites, lines, seed=seed), f"<enterprise {sites}x{lines}>")
