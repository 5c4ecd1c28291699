"""The control room screen in a real headless Chromium: the Dash app served by WebServer on a
free port over a context built from real parts (demo site, LiveState, AlertBook, DuckDB
historian). Checks the line tiles and their state texts, the active alert rows, a click on a
tile opening the line page with its trends, and that the interval refresh shows a new alarm.
Screenshots of each page go to $CONTROLTOWER_ARTEFACTS (default tests/artefacts/, not in git);
set CONTROLTOWER_SCREENSHOT / CONTROLTOWER_LINE_SCREENSHOT=path to save the README's pictures
(docs/screenshot.png, docs/line.png are made this way)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import require_binary

pytestmark = pytest.mark.integration

BIO, TAB, FILL = "lyon.usp.bio1", "lyon.osd.tab1", "lyon.ff.fill1"
ARTEFACTS = Path(os.environ.get("CONTROLTOWER_ARTEFACTS") or Path(__file__).resolve().parents[1] / "artefacts")


def _artefact(driver, name: str) -> Path:
    """A screenshot of the page as it is, in the artefacts folder."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / name
    assert driver.save_screenshot(str(path)), f"could not save the screenshot to {path}"
    return path


@pytest.fixture
def screen(tmp_path: Path):
    from controltower.screen import create_app
    from controltower.webserver import WebServer
    from tests.screen.demo_context import build_context, demo_scene

    ctx = build_context(tmp_path)
    # The scene's samples end when the test starts: on a busy machine they must not turn stale
    # (10 s by default) before the checks; staleness has tests of its own (tests/screen).
    ctx.site = ctx.site.model_copy(update={"screen": ctx.site.screen.model_copy(update={"stale_after_s": 300.0})})
    demo_scene(ctx, datetime.now(UTC))
    server = WebServer(create_app(ctx), host="127.0.0.1", port=0).start()
    try:
        yield ctx, server
    finally:
        server.stop()


@pytest.fixture
def browser() -> Iterator[object]:
    chromium = require_binary("chromium", "chromium-browser", "/usr/bin/chromium")
    chromedriver = require_binary("chromedriver", "/usr/bin/chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="controltower-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--hide-scrollbars", "--window-size=1600,1500", f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, condition, timeout: float = 15.0, what: str = "condition"):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(WebDriverException,)).until(
            condition
        )
    except Exception as exc:  # a TimeoutException says nothing of what was awaited
        logs = [e["message"] for e in driver.get_log("browser") if e.get("level") in ("SEVERE", "WARNING")]
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; browser console: {logs}") from exc


def _row_texts(driver, selector: str) -> list[str]:
    """The text of every element matching `selector`, read by the page itself in one call."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText);", selector
    )


def _tile_states(driver) -> dict[str, tuple[str, str]]:
    """line id -> (data-state, state text) of every tile, read by the page in one call."""
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('.tile')).map(t => [t.dataset.line, t.dataset.state, "
        "(t.querySelector('.tile-state') || {}).innerText || '']);")
    return {line: (state, text) for line, state, text in rows}


def test_screen_shows_lines_alerts_and_trend_in_chromium(screen, browser) -> None:
    from selenium.webdriver.common.by import By

    ctx, server = screen
    driver = browser
    started = time.monotonic()
    driver.get(server.url + "/")

    states = _wait(driver, lambda d: (s := _tile_states(d)) and len(s) == 3 and all(t for _, t in s.values()) and s,
                   what="three line tiles with their state texts")
    assert states == {BIO: ("normal", "NORMAL"), TAB: ("warning", "WARNING"), FILL: ("alarm", "ALARM")}

    # The screen re-renders every second: read row texts in one go (a row element found before a
    # refresh is stale after it), and retry until a consistent snapshot is read.
    rows = _wait(driver, lambda d: _row_texts(d, "tr.alert-row.alert-active"), what="an active alert row")
    assert len(rows) == 2
    first = rows[0]
    assert "ALARM" in first and "Fill weight" in first and "2.078 g" in first and "limits: above alarm high" in first
    cleared = _wait(driver, lambda d: _row_texts(d, "tr.alert-row.alert-cleared"), what="a cleared alert row")
    assert len(cleared) == 1 and "Dissolved oxygen" in cleared[0]

    _artefact(driver, "overview.png")
    shot = os.environ.get("CONTROLTOWER_SCREENSHOT")
    if shot:  # the demo scene as it is now, whole page
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1600, max(900, min(int(height) + 20, 2400)))
        time.sleep(0.8)
        assert driver.save_screenshot(str(shot)), f"could not save the screenshot to {shot}"
        driver.set_window_size(1600, 1500)

    # A click on the filling line's tile opens its page (no reload): the unit's trends (its tags
    # and the anomaly score), its state in words, its alarm.
    traces = len([t for t in ctx.tags if t.unit_id == f"{FILL}.filler1"]) + 1
    driver.find_element(By.ID, f"tile-{FILL}").click()
    _wait(driver, lambda d: d.current_url.endswith(f"/line/{FILL}"), what="the line page's URL")
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".unit-graph .scatterlayer .trace")) == traces,
          what="a trace per tag and the score on the filler's graph")
    graph = driver.find_element(By.CSS_SELECTOR, ".unit-graph").text
    assert "Fill weight" in graph and "Anomaly score" in graph and "UCL" in graph and "HH 2.06" in graph
    state = _wait(driver, lambda d: d.find_elements(By.ID, "line-state"), what="the line state")[0]
    assert state.get_attribute("data-state") == "alarm" and "ALARM" in state.text
    assert "ACTIVE · UNACK" in driver.find_element(By.ID, "line-status").text
    time.sleep(1.5)  # a refresh or two: the Patch increments must not break the figure
    assert len(driver.find_elements(By.CSS_SELECTOR, ".unit-graph .scatterlayer .trace")) == traces
    _artefact(driver, "line-filling.png")

    # Back to the overview by the breadcrumb, on to the bioreactor, whose page shades its batch.
    driver.find_element(By.CSS_SELECTOR, ".crumbs a").click()
    _wait(driver, lambda d: len(_tile_states(d)) == 3, what="the overview again")
    driver.find_element(By.ID, f"tile-{BIO}").click()
    _wait(driver, lambda d: "B-BR101-2405-017" in d.find_element(By.CSS_SELECTOR, ".unit-graph").text,
          what="the batch label on the bioreactor's trends")
    time.sleep(0.5)
    _artefact(driver, "line-bioreactor.png")
    line_shot = os.environ.get("CONTROLTOWER_LINE_SCREENSHOT")
    if line_shot:  # the whole page
        Path(line_shot).parent.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1600, max(900, min(int(height) + 160, 2400)))
        time.sleep(0.8)
        assert driver.save_screenshot(str(line_shot)), f"could not save the screenshot to {line_shot}"
        driver.set_window_size(1600, 1500)
    driver.find_element(By.CSS_SELECTOR, ".crumbs a").click()
    _wait(driver, lambda d: len(_tile_states(d)) == 3, what="the overview again")

    # The interval refresh: a new alarm on the bioreactor line reaches its tile within a few seconds.
    ctx.event(datetime.now(UTC) - timedelta(seconds=1), f"{BIO}.br101.temperature", 2, 39.4, 39.0,
              reason="above alarm high 39")
    raised = time.monotonic()
    _wait(driver, lambda d: _tile_states(d).get(BIO, ("",))[0] == "alarm", timeout=10,
          what="the bioreactor tile to turn to alarm")
    assert time.monotonic() - raised < 2 * ctx.site.screen.refresh_ms / 1000 + 2

    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, f"browser console errors: {severe}"

    assert time.monotonic() - started < 90  # two pages and four navigations


def test_overview_of_3_sites_by_22_lines_fits_a_full_hd_screen(tmp_path: Path, browser) -> None:
    """The generated 3 x 22 enterprise: all 66 tiles, grouped by site, on one 1920 x 1080 screen
    without scrolling."""
    from selenium.webdriver.common.by import By

    from analytics.alerts import AlertBook
    from collector.sinks.duckdb import DuckDbHistorian
    from controltower.live import LiveState
    from controltower.metrics import Metrics
    from controltower.screen import create_app
    from controltower.webserver import WebServer
    from simulators.enterprise import build_enterprise
    from simulators.plant import Plant
    from tests.screen.demo_context import DemoContext

    site = build_enterprise(3, 22, seed=7)
    if getattr(site.screen, "auth", None) is not None:  # served on 127.0.0.1 without login, as the demo
        auth = site.screen.auth.model_copy(update={"enabled": False})
        site = site.model_copy(update={"screen": site.screen.model_copy(update={"auth": auth})})
    tags = site.tag_table()
    ctx = DemoContext(site=site, tags=tags, live=LiveState(tags), alerts=AlertBook(tags),
                      historian=DuckDbHistorian(tmp_path / "historian.duckdb"), metrics=Metrics(),
                      started_at=datetime.now(UTC))
    # The screen's clock stays at the newest sample, so the lines stay fresh however slow the machine
    # is today (samples ahead of the clock would read stale: a plant clock ahead).
    plant = Plant(site, seed=7, start=datetime.now(UTC) - timedelta(seconds=30))
    ctx.feed(plant.run(90, 1.0))
    alarm_tag, warning_tag = tags[5].tag_id, tags[700].tag_id
    ctx.event(datetime.now(UTC), alarm_tag, 2, 1e3, 1.0, reason="above alarm high")
    ctx.event(datetime.now(UTC), warning_tag, 1, 1e3, 1.0, reason="above warning high")
    server = WebServer(create_app(ctx, clock=lambda: plant.now), host="127.0.0.1", port=0).start()
    driver = browser
    try:
        driver.set_window_size(1920, 1080)
        driver.get(server.url + "/")
        states = _wait(driver, lambda d: (s := _tile_states(d)) and len(s) == 66 and s, what="66 tiles")
        assert sorted({v[0] for v in states.values()}) == ["alarm", "normal", "warning"]
        assert len(driver.find_elements(By.CSS_SELECTOR, ".site-group")) == 3
        bottom = driver.execute_script(
            "return Math.max(...Array.from(document.querySelectorAll('.tile')).map(t => t.getBoundingClientRect().bottom));")
        viewport = driver.execute_script("return window.innerHeight")
        _artefact(driver, "overview-3x22.png")
        assert bottom <= viewport, f"the last tile ends at {bottom}px, below the {viewport}px screen"
    finally:
        server.stop()
        ctx.historian.close()


# --- the alarm console ----------------------------------------------------------------------------


@pytest.fixture
def console_screen(tmp_path: Path):
    from analytics.alerts import AlertBook, PriorityMap
    from analytics.journal import AlarmJournal
    from controltower.screen import create_app
    from controltower.webserver import WebServer
    from tests.screen.demo_context import build_context, demo_scene

    ctx = build_context(tmp_path)
    journal = AlarmJournal(tmp_path / "alarm_journal.jsonl")
    critical = {f"{FILL}.filler1.fill_weight": {"alarm": "critical"}, f"{BIO}.br101.temperature": {"alarm": "critical"}}
    ctx.alerts = AlertBook(ctx.tags, journal=journal, priority=PriorityMap(critical))
    demo_scene(ctx, datetime.now(UTC))
    server = WebServer(create_app(ctx), host="127.0.0.1", port=0).start()
    try:
        yield ctx, server
    finally:
        server.stop()
        journal.close()


def _grid_cell(driver, alert_id: str, column: str) -> str:
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(
        By.CSS_SELECTOR, f'#console-grid .ag-center-cols-container .ag-row[row-id="{alert_id}"] [col-id="{column}"]')
    return cells[0].text if cells else ""


def test_alarm_console_acknowledges_an_alarm_in_chromium(console_screen, browser) -> None:
    """Open /alarms/ from the overview, select the critical alarm, acknowledge it with a comment:
    its state text changes in the grid and the journal shows the entry. Set
    CONTROLTOWER_CONSOLE_SCREENSHOT=path to save a screenshot (docs/alarm-console.png)."""
    from selenium.webdriver.common.by import By

    ctx, server = console_screen
    driver = browser
    started = time.monotonic()
    fill_weight = next(a for a in ctx.alerts.alarm_list() if a.tag_id == f"{FILL}.filler1.fill_weight")

    driver.get(server.url + "/")
    # The overview flags the unacknowledged critical alarm with a flashing banner, until "Seen".
    _wait(driver, lambda d: "1 unacknowledged CRITICAL alarm (1 new)" in d.find_element(By.ID, "critical-banner").text
          and "critical-banner-new" in d.find_element(By.ID, "critical-banner").get_attribute("class"),
          what="the flashing critical banner on the overview")
    driver.find_element(By.ID, "critical-seen-button").click()
    _wait(driver, lambda d: "critical-banner-new" not in (c := d.find_element(By.ID, "critical-banner")).get_attribute(
        "class") and "critical-banner-on" in c.get_attribute("class"), what="the banner steady once seen")
    link = _wait(driver, lambda d: d.find_elements(By.ID, "nav-alarms"), what="the overview's link to the alarm console")
    link[0].click()
    _wait(driver, lambda d: _grid_cell(d, fill_weight.id, "state_label") == "● ACTIVE · UNACK",
          what="the critical alarm's row, active and unacknowledged")
    assert driver.current_url.endswith("/alarms/")
    assert len(_row_texts(driver, "#console-grid .ag-center-cols-container .ag-row")) == 3
    _wait(driver, lambda d: _grid_cell(d, fill_weight.id, "priority_label") == "1 ◆ CRITICAL", what="its priority")
    _wait(driver, lambda d: "1 unacknowledged CRITICAL alarm" in (c := d.find_element(By.ID, "console-critical-cue")).text
          and "critical-cue-on" in c.get_attribute("class"), what="the critical cue")

    # Select it, say who we are and why, acknowledge.
    driver.find_element(
        By.CSS_SELECTOR, f'#console-grid .ag-row[row-id="{fill_weight.id}"] [col-id="tag_id"]').click()
    _wait(driver, lambda d: "Fill weight" in d.find_element(By.ID, "console-selected").text,
          what="the selected alarm's details")
    driver.find_element(By.ID, "console-user").send_keys("ana.operator")
    driver.find_element(By.ID, "console-ack-comment").send_keys("Check-weigher drift, QA informed")
    driver.find_element(By.ID, "console-ack").click()

    _wait(driver, lambda d: _grid_cell(d, fill_weight.id, "state_label") == "◉ ACTIVE · ACK",
          what="the row's state text to turn to ACTIVE · ACK")
    assert "Acknowledged" in driver.find_element(By.ID, "console-result").text
    assert _grid_cell(driver, fill_weight.id, "ack").startswith("ana.operator")
    _wait(driver, lambda d: "critical-cue-on" not in d.find_element(By.ID, "console-critical-cue").get_attribute("class"),
          what="the critical cue to go once acknowledged")
    first = _wait(driver, lambda d: (r := _row_texts(d, "#console-journal tr.journal-row"))
                  and "acknowledged" in r[0] and r[0], what="the journal entry of the acknowledgement")
    assert "ana.operator" in first and "Check-weigher drift, QA informed" in first
    assert "ACTIVE · UNACK → ACTIVE · ACK" in first
    assert ctx.alerts.get(fill_weight.id).acknowledged_by == "ana.operator"

    # The journal's search box.
    search = driver.find_element(By.ID, "console-journal-search")
    search.send_keys("qa informed\n")
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#console-journal tr.journal-row")) == 1,
          what="the journal filtered to the one matching entry")

    # A new critical alarm brings the cue back, pulsing.
    ctx.event(datetime.now(UTC), f"{BIO}.br101.temperature", 2, 39.4, 39.0, reason="above alarm high 39")
    _wait(driver, lambda d: "critical-cue-new" in d.find_element(By.ID, "console-critical-cue").get_attribute("class"),
          timeout=10, what="the cue for a new critical alarm")

    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, f"browser console errors: {severe}"
    _artefact(driver, "alarms.png")

    shot = os.environ.get("CONTROLTOWER_CONSOLE_SCREENSHOT")
    if shot:
        search.clear()
        search.send_keys("\n")
        time.sleep(1.5)
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        driver.set_window_size(1600, 1150)
        time.sleep(0.8)
        assert driver.save_screenshot(str(shot)), f"could not save the screenshot to {shot}"
    assert time.monotonic() - started < 60


# --- with authentication on -------------------------------------------------------------------------


@pytest.fixture
def secure_console_screen(tmp_path: Path):
    """The console with auth on (a users file with an operator and a quality engineer, an audit
    trail), as `controltower run` serves it."""
    from analytics.alerts import AlertBook, PriorityMap
    from analytics.journal import AlarmJournal
    from controltower.audit import AuditTrail
    from controltower.auth import UserStore
    from controltower.screen import create_app
    from controltower.site import AuthConfig
    from controltower.webserver import WebServer
    from controltower.websecurity import WebSecurity
    from tests.screen.demo_context import build_context, demo_scene

    ctx = build_context(tmp_path)
    auth = AuthConfig(enabled=True)
    ctx.site = ctx.site.model_copy(update={"screen": ctx.site.screen.model_copy(update={"auth": auth})})
    journal = AlarmJournal(tmp_path / "alarm_journal.jsonl")
    ctx.alerts = AlertBook(ctx.tags, journal=journal,
                           priority=PriorityMap({f"{BIO}.br101.temperature": {"alarm": "critical"}}))
    demo_scene(ctx, datetime.now(UTC))
    from tests.screen.test_auth import FAST

    users = UserStore(tmp_path / "users.yaml", hasher=FAST)
    users.add("olga", "operator", "operator-pass-1")
    users.add("quinn", "quality_engineer", "quality-pass-1")
    trail = AuditTrail(tmp_path / "audit.jsonl")
    security = WebSecurity(auth, users=users, audit=trail)
    server = WebServer(create_app(ctx, security=security), host="127.0.0.1", port=0).start()
    try:
        yield ctx, server, trail
    finally:
        server.stop()
        journal.close()


def _log_in(driver, url: str, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/alarms/")
    _wait(driver, lambda d: d.find_elements(By.ID, "login-username"), what="the login page (redirected there)")
    assert "/login?next=/alarms/" in driver.current_url
    driver.find_element(By.ID, "login-username").send_keys(user)
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()


def test_log_in_see_a_new_alarm_acknowledge_it_and_find_it_in_the_journal(secure_console_screen, browser) -> None:
    """Auth on: log in as an operator, see a fault raised after the page loaded appear as an
    alarm, acknowledge it with a comment (recorded under the logged-in user, whatever the page
    says), find it in the journal and in the audit trail; every request passes the CSP, the
    CSRF check (dash-renderer sends the token by itself) and the role check."""
    from selenium.webdriver.common.by import By

    from controltower.audit import verify_trail

    ctx, server, trail = secure_console_screen
    driver = browser
    started = time.monotonic()
    _log_in(driver, server.url, "olga", "wrong-password")
    _wait(driver, lambda d: "Wrong user name or password" in d.page_source, what="the login error")
    driver.get_log("browser")  # drained: the refused login's own 401 is logged as a failed load
    _log_in(driver, server.url, "olga", "operator-pass-1")
    _wait(driver, lambda d: d.current_url.endswith("/alarms/") and d.find_elements(By.ID, "nav-user-name"),
          what="the console, logged in")
    assert driver.find_element(By.ID, "nav-user-name").text == "olga"
    assert driver.find_element(By.ID, "console-user").get_attribute("value") == "olga"
    assert not driver.find_element(By.ID, "console-user").is_enabled()

    # A fault in the plant: the bioreactor temperature above its alarm limit, after the page loaded.
    ctx.event(datetime.now(UTC), f"{BIO}.br101.temperature", 2, 39.4, 39.0, reason="above alarm high 39")
    temperature = next(a for a in ctx.alerts.alarm_list() if a.tag_id == f"{BIO}.br101.temperature")
    _wait(driver, lambda d: _grid_cell(d, temperature.id, "state_label") == "● ACTIVE · UNACK", timeout=10,
          what="the new alarm in the grid")
    driver.find_element(
        By.CSS_SELECTOR, f'#console-grid .ag-row[row-id="{temperature.id}"] [col-id="tag_id"]').click()
    _wait(driver, lambda d: "Broth temperature" in d.find_element(By.ID, "console-selected").text,
          what="the selected alarm's details")
    driver.find_element(By.ID, "console-ack-comment").send_keys("Cooling valve checked")
    driver.find_element(By.ID, "console-ack").click()
    _wait(driver, lambda d: _grid_cell(d, temperature.id, "state_label") == "◉ ACTIVE · ACK",
          what="the alarm acknowledged")
    first = _wait(driver, lambda d: (r := _row_texts(d, "#console-journal tr.journal-row"))
                  and "acknowledged" in r[0] and r[0], what="the journal entry")
    assert "olga" in first and "Cooling valve checked" in first
    assert ctx.alerts.get(temperature.id).acknowledged_by == "olga"
    acks = [r for r in trail.records() if r["action"] == "alarm.ack"]
    assert len(acks) == 1 and acks[0]["actor"] == "olga" and acks[0]["reason"] == "Cooling valve checked"
    assert verify_trail(trail.path).ok

    # No CSP violation, no failed callback.
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, f"browser console errors: {severe}"

    # Log out: back to the login page, the console is closed again.
    driver.find_element(By.ID, "nav-logout").click()
    _wait(driver, lambda d: d.find_elements(By.ID, "login-username"), what="the login page after logout")
    driver.get(server.url + "/alarms/")
    _wait(driver, lambda d: "/login" in d.current_url, what="the redirect to login")
    assert [r["action"] for r in trail.records() if r["action"].startswith("log")] == [
        "login.failed", "login", "logout"]
    assert time.monotonic() - started < 60


def test_a_quality_engineer_cannot_shelve_in_chromium(secure_console_screen, browser) -> None:
    from selenium.webdriver.common.by import By

    ctx, server, trail = secure_console_screen
    driver = browser
    _log_in(driver, server.url, "quinn", "quality-pass-1")
    fill_weight = next(a for a in ctx.alerts.alarm_list() if a.tag_id == f"{FILL}.filler1.fill_weight")
    _wait(driver, lambda d: _grid_cell(d, fill_weight.id, "state_label") == "● ACTIVE · UNACK",
          what="the console with the fill-weight alarm")
    driver.find_element(
        By.CSS_SELECTOR, f'#console-grid .ag-row[row-id="{fill_weight.id}"] [col-id="tag_id"]').click()
    _wait(driver, lambda d: "Fill weight" in d.find_element(By.ID, "console-selected").text, what="the selection")
    driver.find_element(By.ID, "console-shelve-reason").send_keys("maintenance")
    driver.find_element(By.ID, "console-shelve").click()
    _wait(driver, lambda d: "may not alarm.shelve" in d.find_element(By.ID, "console-result").text,
          what="the refusal")
    assert ctx.alerts.get(fill_weight.id).shelved_until is None
    assert not [r for r in trail.records() if r["action"].startswith("alarm")]
