"""The screen's refresh callbacks at 3 sites x 22 lines: server time and payload bytes.

    .venv/bin/python bench/screen.py               # prints the table, updates docs/benchmarks.md
    .venv/bin/python bench/screen.py --no-write --minutes 5 --ticks 20

A real `ControlTower` over the generated enterprise (`simulators/enterprise.py`, what
`controltower simulate --sites 3 --lines 22` runs): the simulated plant (`simulators/plant.py`)
runs `--minutes` of 1 Hz samples with a few faults, which go through the DuckDB historian, the
live state and the detection engine, as in the product. Then each refresh callback is called as
the browser calls it, an HTTP POST to `/_dash-update-component` through Flask's test client,
`--ticks` times, with one more simulated second fed to the tower (outside the timing) and the
clock advanced by one refresh interval between ticks. Measured per callback: the server time of
the POST (median and p95) and the response bytes; per screen: the bytes per second at the
refresh interval (every callback that ticks on that screen).

Baselines, in the same run: the overview re-sending every tile and alert table every tick (as it
did before the keys and `Patch`), and the line page re-sending its full figures every tick
(instead of `Patch` increments). Targets (issue 6): under 100 ms server time per refresh, well
under 100 kB/s per open screen.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl
from benchdoc import write_section

from controltower.batch_events import batch_events_frame, read_phase_spans
from controltower.runtime import ControlTower
from controltower.screen import create_app, ids
from controltower.screen import queries as q
from controltower.screen.line import FULL_REBUILD_FRACTION
from simulators.batch_events import BatchTransitions
from simulators.enterprise import build_enterprise
from simulators.plant import Plant

TITLE = "Screen refresh at 3 sites x 22 lines"
TARGET_MS = 100.0
TARGET_BYTES_PER_S = 100_000
# The line page's LTTB target before it was halved (first render 796 kB on a 50-tag line).
BEFORE_POINTS = 600


class Tower:
    """The tower, the simulated plant feeding it, its batch events and a clock the screen reads."""

    def __init__(self, sites: int, lines: int, minutes: float, data_dir: Path):
        self.site = _without_login(build_enterprise(sites, lines, seed=7))
        self.tower = ControlTower(self.site, data_dir=data_dir)
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=minutes)
        self.plant = Plant(self.site, seed=7, start=start)
        self.now = start
        self.events = 0
        # The batch events as the simulator's servers announce them (simulators/batch_events.py):
        # each unit's first batch starts with the plant, then every phase change, batch end and
        # start as the plant's batch clocks move, stored with the historian's batch-event write
        # as the collector stores them; so the line page shades its ISA-88 phases.
        self._transitions = BatchTransitions(self.plant.batch_info())
        self._transitions.update(self.plant.unit_states(), start)
        info = self.plant.batch_info()
        self._store_events([{"ts": start, "unit_id": unit, "transition": "batch_start", "batch_id": batch_id,
                             "phase": phase, "product": info[unit][0], "recipe": info[unit][1]}
                            for unit, (batch_id, phase) in self.plant.unit_states().items()])
        done, self._faulted = 0.0, False
        while done < minutes * 60:
            if done >= minutes * 30 and not self._faulted:
                self._faults()
            self.feed(min(30.0, minutes * 60 - done))
            done += 30.0

    def _faults(self) -> None:
        """Halfway through the history, a step of twice the alarm span on a few tags spread over
        the enterprise: alarms stay active, tiles and scores are not all quiet."""
        self._faulted = True
        tags = [t for t in self.tower.tags if t.tag.limits.alarm_high is not None and t.tag.limits.alarm_low is not None]
        for info in tags[:: max(1, len(tags) // 8)][:8]:
            span = info.tag.limits.alarm_high - info.tag.limits.alarm_low
            self.plant.inject(info.tag_id, "bias", duration_s=3600.0, magnitude=2 * span)

    def feed(self, seconds: float) -> pl.DataFrame:
        """`seconds` more of the plant at 1 Hz through the historian, the live state and the
        engine, with the batch events of those seconds (the plant's states compared each second)."""
        frames, events = [], []
        for _ in range(max(1, round(seconds))):
            frames.append(self.plant.run(1.0, 1.0))
            events += self._transitions.update(self.plant.unit_states(), self.plant.now)
        frame = pl.concat(frames)
        t = self.tower
        t.historian.write_sync(frame)
        self._store_events([{"ts": e.at, "unit_id": e.unit, "transition": e.transition, "batch_id": e.batch_id,
                             "phase": e.phase, "product": e.product, "recipe": e.recipe} for e in events])
        t.live.update(frame)
        t.engine.process(frame)
        self.now = self.plant.start + timedelta(seconds=self.plant.elapsed_s)
        return frame

    def _store_events(self, rows: list[dict]) -> None:
        if rows:
            self.tower.historian.write_batch_events_sync(batch_events_frame(rows))
            self.events += len(rows)

    def clock(self) -> datetime:
        return self.now


def _without_login(site):
    """The site with the screen's login off (on 127.0.0.1, as the demo): the bench measures the
    refresh, not the session check."""
    screen = site.screen
    if getattr(screen, "auth", None) is None or not screen.auth.enabled:
        return site
    auth = screen.auth.model_copy(update={"enabled": False})
    return site.model_copy(update={"screen": screen.model_copy(update={"auth": auth})})


class DashClient:
    """POSTs a callback's inputs to a Dash app the way the renderer does; returns the response."""

    def __init__(self, app, prefix: str = "/"):
        self.client = app.server.test_client()
        self.app = app
        self.prefix = prefix

    def key(self, app, contains: str) -> str:
        found = [k for k in app.callback_map if contains in k]
        if len(found) != 1:
            raise KeyError(f"{contains!r}: {found}")
        return found[0]

    def call(self, app, contains: str, outputs, inputs, state=(), changed=None) -> tuple[float, int, dict | None]:
        """(seconds, response bytes, decoded response or None for 204) of one callback POST."""
        key = self.key(app, contains)
        body = {
            "output": key,
            "outputs": outputs,
            "inputs": [{"id": i, "property": p, "value": v} for i, p, v in inputs],
            "state": [{"id": i, "property": p, "value": v} for i, p, v in state],
            "changedPropIds": changed if changed is not None else [f"{inputs[0][0]}.{inputs[0][1]}"],
        }
        data = json.dumps(body)
        started = time.perf_counter()
        resp = self.client.post(f"{self.prefix}_dash-update-component", data=data, content_type="application/json")
        took = time.perf_counter() - started
        if resp.status_code not in (200, 204):
            raise RuntimeError(f"{contains}: HTTP {resp.status_code} {resp.data[:300]!r}")
        return took, len(resp.data), (json.loads(resp.data) if resp.status_code == 200 else None)


def out(component: str, prop: str) -> dict:
    return {"id": component, "property": prop}


def value(response: dict | None, component: str, prop: str, default=None):
    if not response:
        return default
    return response.get("response", {}).get(component, {}).get(prop, default)


class Series:
    def __init__(self, name: str):
        self.name = name
        self.ms: list[float] = []
        self.bytes: list[int] = []

    def add(self, seconds: float, size: int) -> None:
        self.ms.append(seconds * 1000)
        self.bytes.append(size)

    def row(self) -> dict:
        ms = sorted(self.ms)
        return {"name": self.name, "n": len(ms), "median_ms": statistics.median(ms),
                "p95_ms": ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))],
                "median_bytes": statistics.median(self.bytes), "max_bytes": max(self.bytes)}


def run(args) -> tuple[list[dict], dict, dict]:
    with tempfile.TemporaryDirectory(prefix="bench-screen-") as tmp:
        built = time.perf_counter()
        world = Tower(args.sites, args.lines, args.minutes, Path(tmp))
        fill_s = time.perf_counter() - built
        tower = world.tower
        app = create_app(tower, clock=world.clock)
        from controltower.screen.console import PATH as CONSOLE_PATH

        console_app = next(a for a in _dash_apps(app) if a.config.url_base_pathname == CONSOLE_PATH)
        main = DashClient(app)
        console = DashClient(console_app, CONSOLE_PATH)
        refresh_s = world.site.screen.refresh_ms / 1000
        # The line page: the line with the most tags.
        per_line = pl.DataFrame({"line": [t.line_id for t in tower.tags]}).group_by("line").len().sort(
            ["len", "line"], descending=[True, False])
        line_id = per_line["line"][0]
        units = [u["unit_id"] for u in q.line_info(tower, line_id)["units"]]
        graphs = [out({"type": ids.LINE_UNIT_GRAPH, "unit": u}, "figure") for u in units]

        s = {name: Series(name) for name in (
            "header (every page)", "overview tiles", "overview alerts", "overview tiles, full re-send (baseline)",
            "overview alerts, full re-send (baseline)", "line page: first render", "line page: refresh (Patch)",
            "line page: full figures every tick (baseline)", "line page status", "console grid", "console journal",
            "console selected")}

        tile_keys = alerts_key = header_key = critical_now = line_state = status_key = rows_key = journal_key = None
        seen: list[str] = []
        first_tiles = main.call(app, ids.TILE_KEYS, [out(ids.LINE_TILES, "children"), out(ids.TILE_KEYS, "data")],
                                [(ids.INTERVAL, "n_intervals", 0)], [(ids.TILE_KEYS, "data", None)])
        tile_keys = value(first_tiles[2], ids.TILE_KEYS, "data")
        n_first = main.call(app, ids.LINE_TREND_STATE, [graphs, out(ids.LINE_TREND_STATE, "data"),
                                                         out(ids.LINE_CAPTION, "children")],
                            [(ids.LINE_TICK, "n_intervals", 0)],
                            [(ids.LINE_ID, "data", line_id), (ids.LINE_TREND_STATE, "data", None)])
        line_state = value(n_first[2], ids.LINE_TREND_STATE, "data")
        window = timedelta(seconds=world.site.screen.trend_window_s)
        spans = read_phase_spans(tower.historian, line_id, world.now - window, world.now)
        bands = phase_bands(n_first[2])
        if not bands:
            raise RuntimeError(f"the line page of {line_id} drew no phase shading: the scene is not what the screen shows")
        for tick in range(1, args.ticks + 1):
            world.feed(refresh_s)
            r = main.call(app, ids.HEADER_KEY,
                          [out(ids.CLOCK, "children"), out(ids.FRESHNESS, "children"), out(ids.FRESHNESS, "className"),
                           out(ids.SUMMARY, "children"), out(ids.HEADER_KEY, "data"),
                           out(ids.CRITICAL_BANNER, "className"), out(ids.CRITICAL_BANNER_TEXT, "children"),
                           out(ids.CRITICAL_NOW, "data"), out(ids.CRITICAL_NEW, "data")],
                          [(ids.SHELL_TICK, "n_intervals", tick), (ids.CRITICAL_SEEN, "data", seen)],
                          [(ids.HEADER_KEY, "data", header_key), (ids.CRITICAL_NOW, "data", critical_now)])
            s["header (every page)"].add(r[0], r[1])
            header_key = value(r[2], ids.HEADER_KEY, "data", header_key)
            critical_now = value(r[2], ids.CRITICAL_NOW, "data", critical_now)

            tiles_out = [out(ids.LINE_TILES, "children"), out(ids.TILE_KEYS, "data")]
            r = main.call(app, ids.TILE_KEYS, tiles_out, [(ids.INTERVAL, "n_intervals", tick)],
                          [(ids.TILE_KEYS, "data", tile_keys)])
            s["overview tiles"].add(r[0], r[1])
            tile_keys = value(r[2], ids.TILE_KEYS, "data", tile_keys)
            r = main.call(app, ids.TILE_KEYS, tiles_out, [(ids.INTERVAL, "n_intervals", tick)],
                          [(ids.TILE_KEYS, "data", None)])
            s["overview tiles, full re-send (baseline)"].add(r[0], r[1])

            alerts_out = [out(ids.ACTIVE_ALERTS_COUNT, "children"), out(ids.ACTIVE_ALERTS, "children"),
                          out(ids.CLEARED_ALERTS, "children"), out(ids.ALERTS_KEY, "data")]
            r = main.call(app, ids.ALERTS_KEY, alerts_out, [(ids.INTERVAL, "n_intervals", tick)],
                          [(ids.ALERTS_KEY, "data", alerts_key)])
            s["overview alerts"].add(r[0], r[1])
            alerts_key = value(r[2], ids.ALERTS_KEY, "data", alerts_key)
            r = main.call(app, ids.ALERTS_KEY, alerts_out, [(ids.INTERVAL, "n_intervals", tick)],
                          [(ids.ALERTS_KEY, "data", None)])
            s["overview alerts, full re-send (baseline)"].add(r[0], r[1])

            trend_out = [graphs, out(ids.LINE_TREND_STATE, "data"), out(ids.LINE_CAPTION, "children")]
            r = main.call(app, ids.LINE_TREND_STATE, trend_out, [(ids.LINE_TICK, "n_intervals", tick)],
                          [(ids.LINE_ID, "data", line_id), (ids.LINE_TREND_STATE, "data", line_state)])
            s["line page: refresh (Patch)"].add(r[0], r[1])
            line_state = value(r[2], ids.LINE_TREND_STATE, "data", line_state)
            r = main.call(app, ids.LINE_TREND_STATE, trend_out, [(ids.LINE_TICK, "n_intervals", 0)],
                          [(ids.LINE_ID, "data", line_id), (ids.LINE_TREND_STATE, "data", None)])
            s["line page: first render"].add(r[0], r[1])
            s["line page: full figures every tick (baseline)"].add(r[0], r[1])
            r = main.call(app, ids.LINE_STATUS_KEY, [out(ids.LINE_STATUS, "children"), out(ids.LINE_STATUS_KEY, "data")],
                          [(ids.LINE_TICK, "n_intervals", tick)],
                          [(ids.LINE_ID, "data", line_id), (ids.LINE_STATUS_KEY, "data", status_key)])
            s["line page status"].add(r[0], r[1])
            status_key = value(r[2], ids.LINE_STATUS_KEY, "data", status_key)

            r = console.call(console_app, ids.CONSOLE_ROWS_KEY,
                             [out(ids.CONSOLE_GRID, "rowData"), out(ids.CONSOLE_ROWS_KEY, "data"),
                              out(ids.CONSOLE_COUNT, "children"), out(ids.CONSOLE_SUMMARY, "children"),
                              out(ids.CONSOLE_CUE, "children"), out(ids.CONSOLE_CUE, "className"),
                              out(ids.CONSOLE_SEEN_CRITICAL, "data"), out(ids.CONSOLE_NEW_CRITICAL, "data"),
                              out(ids.CONSOLE_CLOCK, "children")],
                             [(ids.CONSOLE_TICK, "n_intervals", tick), (ids.CONSOLE_VERSION, "data", 0),
                              (ids.CONSOLE_VIEW, "value", "alarms"),
                              (ids.CONSOLE_PRIORITIES, "value", ["critical", "high", "medium", "low"])],
                             [(ids.CONSOLE_ROWS_KEY, "data", rows_key), (ids.CONSOLE_SEEN_CRITICAL, "data", [])])
            s["console grid"].add(r[0], r[1])
            rows_key = value(r[2], ids.CONSOLE_ROWS_KEY, "data", rows_key)
            r = console.call(console_app, ids.CONSOLE_JOURNAL_KEY,
                             [out(ids.CONSOLE_JOURNAL, "children"), out(ids.CONSOLE_JOURNAL_KEY, "data")],
                             [(ids.CONSOLE_JOURNAL_SEARCH, "value", None), (ids.CONSOLE_VERSION, "data", 0),
                              (ids.CONSOLE_TICK, "n_intervals", tick)],
                             [(ids.CONSOLE_JOURNAL_KEY, "data", journal_key)],
                             changed=[f"{ids.CONSOLE_TICK}.n_intervals"])
            s["console journal"].add(r[0], r[1])
            journal_key = value(r[2], ids.CONSOLE_JOURNAL_KEY, "data", journal_key)
            r = console.call(console_app, ids.CONSOLE_SELECTED, out(ids.CONSOLE_SELECTED, "children"),
                             [(ids.CONSOLE_GRID, "selectedRows", None), (ids.CONSOLE_VERSION, "data", 0),
                              (ids.CONSOLE_TICK, "n_intervals", tick)], changed=[f"{ids.CONSOLE_TICK}.n_intervals"])
            s["console selected"].add(r[0], r[1])

        rows = [x.row() for x in s.values()]
        by = {r["name"]: r for r in rows}
        first_points = {pts: first_figures(tower, line_id, units, world.now, pts, args.ticks)
                        for pts in (q.LINE_TREND_POINTS, BEFORE_POINTS)}
        phase_read_ms = []
        for _ in range(args.ticks):  # what each line-page refresh reads of the batch events (one tick)
            started = time.perf_counter()
            read_phase_spans(tower.historian, line_id, world.now - timedelta(seconds=refresh_s), world.now)
            phase_read_ms.append((time.perf_counter() - started) * 1000)

        def per_s(*names: str) -> float:
            return sum(statistics.mean(s[n].bytes) for n in names) / refresh_s

        screens = {
            "overview": per_s("header (every page)", "overview tiles", "overview alerts"),
            "overview, before (full re-send)": per_s("header (every page)", "overview tiles, full re-send (baseline)",
                                                     "overview alerts, full re-send (baseline)"),
            "line page": per_s("header (every page)", "line page: refresh (Patch)", "line page status"),
            "line page, full figures every tick": per_s("header (every page)",
                                                        "line page: full figures every tick (baseline)",
                                                        "line page status"),
            "alarm console": per_s("console grid", "console journal", "console selected"),
        }
        info = {"fill_s": fill_s, "tags": len(tower.tags), "lines": len(q.line_catalog(tower)),
                "line_id": line_id, "line_tags": int(per_line["len"][0]), "units": len(units),
                "active_alerts": len(tower.alerts.active()), "refresh_s": refresh_s,
                "window_s": world.site.screen.trend_window_s, "samples": tower.historian.count(),
                "first_line_render_bytes": n_first[1], "by": by, "events": world.events,
                "line_spans": spans.height, "line_bands": bands, "first_points": first_points,
                "phase_read_ms": statistics.median(phase_read_ms)}
        tower.close()
        return rows, screens, info


def first_figures(tower, line_id: str, units: list[str], now: datetime, points: int, repeats: int) -> tuple[float, int]:
    """(median ms, JSON bytes) of the line page's full figures built directly (no HTTP) with
    `points` per tag: the first render at this LTTB target against the one before."""
    from plotly.io.json import to_json_plotly

    from controltower.screen.line import unit_figure

    took, size = [], 0
    for _ in range(max(3, repeats // 3)):
        started = time.perf_counter()
        trends = q.line_trends(tower, line_id, now, points=points)
        size = len(to_json_plotly([unit_figure(trends, u) for u in units]))
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took), size


def phase_bands(response: dict | None) -> int:
    """The phase bands (shapes named "phase ...") in the figures of a line-page response."""
    figures = [v["figure"] for v in (response or {}).get("response", {}).values() if "figure" in v]
    return sum(1 for f in figures for shape in f.get("layout", {}).get("shapes", [])
               if str(shape.get("name", "")).startswith("phase "))


def _dash_apps(app):
    """The Dash apps on `app`'s Flask server (the overview's and the console's)."""
    import gc

    import dash

    return [o for o in gc.get_objects() if isinstance(o, dash.Dash) and o.server is app.server]


def report(rows: list[dict], screens: dict, info: dict, args) -> str:
    lines = [
        f"## {TITLE}",
        "",
        (f"{datetime.now(UTC):%Y-%m-%d}, `.venv/bin/python bench/screen.py --minutes {args.minutes:g} "
        f"--ticks {args.ticks}` ({platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, 2 shared cores). A real `ControlTower` over the generated enterprise "
        f"({args.sites} sites x {args.lines} lines: {info['lines']} lines, {info['tags']} tags), its DuckDB "
        f"historian filled with {args.minutes:g} min of the simulated plant at 1 Hz ({info['samples']:,} samples, "
        f"through the live state and the detection engine: {info['active_alerts']} active alerts) in "
        f"{info['fill_s']:.0f} s. Each callback is an HTTP POST to `/_dash-update-component` (Flask test "
        f"client, the body the browser sends), {args.ticks} ticks, one simulated second fed between ticks "
        f"(not timed). Line page: `{info['line_id']}` ({info['units']} units, {info['line_tags']} tags, "
        f"window {info['window_s']:.0f} s, LTTB to {q.LINE_TREND_POINTS} points per tag). Batch events as the "
        f"simulator announces them (`simulators/batch_events.py`: each unit's batch start, phase changes, batch "
        f"ends) stored with the historian's `write_batch_events_sync`: {info['events']:,} events, "
        f"{info['line_spans']} phase spans in the line page's window, {info['line_bands']} phase bands drawn, "
        "so every line-page refresh reads its phase spans as the screen does."),
        "",
        "| callback | server ms (median) | p95 | response bytes (median) | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['median_ms']:.1f} | {r['p95_ms']:.1f} | {r['median_bytes']:,.0f} | "
                     f"{r['max_bytes']:,} |")
    lines += ["", (f"Bytes per second per open screen at the {info['refresh_s']:g} s refresh (all its ticking "
                   "callbacks; target well under 100 kB/s):"), "", "| screen | bytes/s |", "|---|---:|"]
    for name, bps in screens.items():
        lines.append(f"| {name} | {bps:,.0f} |")
    by = info["by"]
    refreshes = [r for r in rows if "baseline" not in r["name"] and "first render" not in r["name"]]
    worst = max(refreshes, key=lambda r: r["median_ms"])
    worst_p95 = max(refreshes, key=lambda r: r["p95_ms"])
    first = by["line page: first render"]
    lines += [
        "",
        (f"Slowest refresh callback: {worst['name']}, median {worst['median_ms']:.0f} ms "
        f"({'within' if worst['median_ms'] < TARGET_MS else 'OVER'} the {TARGET_MS:.0f} ms target); highest p95: "
        f"{worst_p95['name']}, {worst_p95['p95_ms']:.0f} ms (the machine is shared: p95 carries other processes' "
        f"load). Opening the line page (not a refresh): median {first['median_ms']:.0f} ms, "
        f"{first['median_bytes'] / 1000:,.0f} kB once. "
        f"Line page: a refresh sends {by['line page: refresh (Patch)']['median_bytes']:,.0f} B against "
        f"{by['line page: first render']['median_bytes']:,.0f} B for the full figures "
        f"(x{by['line page: first render']['median_bytes'] / max(1, by['line page: refresh (Patch)']['median_bytes']):.0f}); "
        f"overview: {screens['overview']:,.0f} B/s against {screens['overview, before (full re-send)']:,.0f} B/s "
        "re-sending every tile and table. The line page also redraws its figures in full every "
        f"{info['window_s'] * FULL_REBUILD_FRACTION:.0f} s (to drop what scrolled out) or when a batch starts: "
        f"{first['median_bytes'] / (info['window_s'] * FULL_REBUILD_FRACTION):,.0f} B/s more on average."),
        "",
        ("First render, the full figures built directly (no HTTP; median of "
         f"{max(3, args.ticks // 3)}): " + "; ".join(
             f"{pts} points per tag{' (now)' if pts == q.LINE_TREND_POINTS else ' (before)'}: {ms:.0f} ms, "
             f"{size / 1000:,.0f} kB" for pts, (ms, size) in info["first_points"].items())
         + ". The x values (epoch ms, 14 bytes a point against about 7 for a value) are two thirds of the "
         "figures' bytes, so the points per tag set the size; about half the server time is the historian "
         "read of the window (the bench's history is the window, so DuckDB scans it all)."),
        "",
        (f"Phases: each line-page refresh reads the phase spans of its last tick from the historian's batch "
         f"events (a new phase redraws the figures with their shading): {info['phase_read_ms']:.1f} ms median "
         f"of the refresh's {by['line page: refresh (Patch)']['median_ms']:.0f} ms. Within the target, so not "
         "cached: the screen has no signal of a new event short of reading them."),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--lines", type=int, default=22)
    parser.add_argument("--minutes", type=float, default=10.0, help="simulated history before the ticks")
    parser.add_argument("--ticks", type=int, default=30)
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    rows, screens, info = run(args)
    text = report(rows, screens, info, args)
    print(text)
    if not args.no_write:
        write_section(TITLE, text)


if __name__ == "__main__":
    main()
