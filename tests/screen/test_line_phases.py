"""The line page's phase shading without a browser: the historian's batch events become one
labelled band per ISA-88 phase on the unit's trends, in a colour-blind-safe colour per phase;
the refresh Patches carry no shading, and a new phase redraws the figure once."""

from __future__ import annotations

import json
from datetime import timedelta

import plotly
from dash import Patch

from controltower.batch_events import batch_events_frame
from controltower.screen import line
from tests.screen.conftest import NOW
from tests.screen.demo_context import BIO, demo_scene

UNIT = f"{BIO}.br101"


def store_events(ctx, *rows) -> None:
    ctx.historian.write_batch_events_sync(batch_events_frame([
        {"ts": ts, "unit_id": UNIT, "batch_id": batch, "phase": phase, "transition": transition}
        for ts, batch, phase, transition in rows]))


def phase_bands(figure: dict) -> list[tuple[str, int, int]]:
    return [(s["name"], s["x0"], s["x1"]) for s in figure["layout"]["shapes"] if s.get("name", "").startswith("phase ")]


def test_phase_colours_differ_within_a_unit_and_do_not_depend_on_order() -> None:
    names = ["start_up", "filling", "wind_down", "inoculation", "growth", "production", "harvest"]
    colours = line.phase_colours(names)
    assert len(set(colours.values())) == len(names)
    assert line.phase_colours(list(reversed(names))) == colours


def ms(moment) -> int:
    return int(moment.timestamp() * 1000)


def test_phases_are_shaded_and_labelled_and_a_new_phase_redraws_once(ctx) -> None:
    demo_scene(ctx, NOW)
    store_events(ctx,
                 (NOW - timedelta(hours=2), "B-BR101-2405-017", "inoculation", "batch_start"),
                 (NOW - timedelta(minutes=6), "B-BR101-2405-017", "growth", "phase_change"))
    figures, state, _ = line.line_update(ctx, BIO, [UNIT], None, NOW)
    start = NOW - timedelta(minutes=10)
    # The phase that began before the window is clipped to it; the running one ends at now.
    assert phase_bands(figures[0]) == [
        ("phase inoculation of B-BR101-2405-017", ms(start), ms(NOW - timedelta(minutes=6))),
        ("phase growth of B-BR101-2405-017", ms(NOW - timedelta(minutes=6)), ms(NOW))]
    labels = [a for a in figures[0]["layout"]["annotations"] if a.get("name", "").startswith("phase ")]
    assert [a["text"] for a in labels] == ["inoculation", "growth"]
    colours = {s["fillcolor"] for s in figures[0]["layout"]["shapes"] if s.get("name", "").startswith("phase ")}
    assert len(colours) == 2 and colours <= {line.rgba(c, line.PHASE_ALPHA) for c in line.PHASE_COLOURS}
    # The batch began before the window: its id is in the page's head, not over the title.
    assert "▮ B-BR101-2405-017" not in {a["text"] for a in figures[0]["layout"]["annotations"]}

    # The next tick: a Patch of samples only, no shapes in it.
    ctx.feed(ctx.samples([(NOW + timedelta(seconds=1), t.tag_id, 1.0) for t in ctx.tags if t.unit_id == UNIT],
                         {UNIT: "B-BR101-2405-017"}))
    patches, state, _ = line.line_update(ctx, BIO, [UNIT], state, NOW + timedelta(seconds=2))
    assert isinstance(patches[0], Patch)
    assert "shapes" not in json.dumps(patches[0].to_plotly_json(), cls=plotly.utils.PlotlyJSONEncoder)

    # A new phase starts: the figure is sent whole, with its band; the tick after is a Patch again.
    store_events(ctx, (NOW + timedelta(seconds=2), "B-BR101-2405-017", "production", "phase_change"))
    ctx.feed(ctx.samples([(NOW + timedelta(seconds=3), t.tag_id, 1.0) for t in ctx.tags if t.unit_id == UNIT],
                         {UNIT: "B-BR101-2405-017"}))
    redrawn, state, _ = line.line_update(ctx, BIO, [UNIT], state, NOW + timedelta(seconds=4))
    assert isinstance(redrawn[0], dict)
    assert phase_bands(redrawn[0])[-1][0] == "phase production of B-BR101-2405-017"
    ctx.feed(ctx.samples([(NOW + timedelta(seconds=5), t.tag_id, 1.0) for t in ctx.tags if t.unit_id == UNIT],
                         {UNIT: "B-BR101-2405-017"}))
    again, _, _ = line.line_update(ctx, BIO, [UNIT], state, NOW + timedelta(seconds=6))
    assert isinstance(again[0], Patch)

    # A batch that starts in view is labelled at its start.
    store_events(ctx, (NOW + timedelta(seconds=7), "B-BR101-2405-017", "production", "batch_end"),
                 (NOW + timedelta(seconds=7), "B-BR101-2405-018", "inoculation", "batch_start"))
    figure = line.line_update(ctx, BIO, [UNIT], None, NOW + timedelta(seconds=8))[0][0]
    assert {"text": "▮ B-BR101-2405-018", "x": ms(NOW + timedelta(seconds=7))}.items() <= next(
        a for a in figure["layout"]["annotations"] if a["text"].startswith("▮")).items()
    assert phase_bands(figure)[-1] == ("phase inoculation of B-BR101-2405-018", ms(NOW + timedelta(seconds=7)),
                                       ms(NOW + timedelta(seconds=8)))


def test_without_stored_phases_the_batches_are_shaded_as_before(ctx) -> None:
    demo_scene(ctx, NOW)
    figures, _, _ = line.line_update(ctx, BIO, [UNIT], None, NOW)
    assert phase_bands(figures[0]) == []
    assert any(s.get("name") == "batch B-BR101-2405-017" for s in figures[0]["layout"]["shapes"])
