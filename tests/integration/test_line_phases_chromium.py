"""The line page in headless Chromium with batch phases in the historian: the bioreactor's
trends show one labelled band per ISA-88 phase (the running one up to now), drawn by Plotly as
shapes of the unit's figure, and they stay through the Patch refreshes. The screenshot is an
artefact (tests/artefacts/line-phases.png; CONTROLTOWER_LINE_SCREENSHOT makes docs/line.png)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controltower.batch_events import batch_events_frame
from tests.integration.test_screen_chromium import _artefact, _wait, browser, screen  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

UNIT = "lyon.usp.bio1.br101"
BATCH = "B-BR101-2405-017"
SHAPES_JS = """
const graph = document.querySelector('.unit-graph .js-plotly-plot');
if (!graph || !graph._fullLayout) return null;
return graph._fullLayout.shapes.filter(s => (s.name || '').startsWith('phase ')).map(s => [s.name, s.fillcolor]);
"""


def test_line_page_shades_the_batch_phases_in_chromium(screen, browser) -> None:  # noqa: F811 - fixtures
    from selenium.webdriver.common.by import By

    ctx, server = screen
    now = datetime.now(UTC)
    ctx.historian.write_batch_events_sync(batch_events_frame([
        {"ts": now - timedelta(hours=1), "unit_id": UNIT, "batch_id": BATCH, "phase": "inoculation",
         "transition": "batch_start"},
        {"ts": now - timedelta(minutes=7), "unit_id": UNIT, "batch_id": BATCH, "phase": "growth",
         "transition": "phase_change"},
        {"ts": now - timedelta(minutes=3), "unit_id": UNIT, "batch_id": BATCH, "phase": "production",
         "transition": "phase_change"},
    ]))
    driver = browser
    driver.get(f"{server.url}/line/lyon.usp.bio1")
    _wait(driver, lambda d: "production" in d.find_element(By.CSS_SELECTOR, ".unit-graph").text,
          timeout=30, what="the phase labels on the bioreactor's trends")
    graph = driver.find_element(By.CSS_SELECTOR, ".unit-graph").text
    assert "inoculation" in graph and "growth" in graph
    shapes = driver.execute_script(SHAPES_JS)
    assert [name for name, _ in shapes] == [f"phase {p} of {BATCH}" for p in ("inoculation", "growth", "production")]
    assert len({colour for _, colour in shapes}) == 3
    # The bands are drawn (below the traces), not only listed in the layout.
    assert len(driver.find_elements(By.CSS_SELECTOR, ".unit-graph .layer-below .shapelayer path")) >= 3
    time.sleep(2.0)  # refreshes: Patches of samples only, the bands stay
    assert [name for name, _ in driver.execute_script(SHAPES_JS)] == [name for name, _ in shapes]
    _artefact(driver, "line-phases.png")
    shot = os.environ.get("CONTROLTOWER_LINE_SCREENSHOT")
    if shot:  # the whole page, for docs/line.png
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1600, max(900, min(int(height) + 160, 2400)))
        time.sleep(0.8)
        assert driver.save_screenshot(str(shot)), f"could not save the screenshot to {shot}"
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, f"browser console errors: {severe}"
