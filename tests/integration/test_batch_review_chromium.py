"""Batch review in a real headless Chromium, authentication on: a quality engineer logs in, opens
/batches/, picks the batch with a pH sensor bias (simulated bioreactor batches in DuckDB, a
golden-batch model in the model store), sees it outside its limits with the pH excursion on the
timeline, clicks the score at the fault and sees pH on top of the contributions, signs a
deviation record with her password, finds it listed, and downloads the deviation report.
Screenshots go to the test artefacts (and to $CONTROLTOWER_BATCH_SCREENSHOT when set: the
README's docs/batch-review.png is made this way)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.integration.test_screen_chromium import _artefact, _wait, browser  # noqa: F401 (fixture)
from tests.screen.test_auth_http import PASSWORDS
from tests.screen.test_batch_api import BATCH, PH, tower  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration


def test_a_quality_engineer_reviews_a_batch_signs_a_record_and_exports_the_report(tower, browser) -> None:  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    url, trail, _ = tower
    driver = browser
    driver.get(url + "/batches/")
    _wait(driver, lambda d: d.find_elements(By.ID, "login-username"), what="the login page")
    driver.find_element(By.ID, "login-username").send_keys("quinn")
    driver.find_element(By.ID, "login-password").send_keys(PASSWORDS["quinn"])
    driver.find_element(By.ID, "login-submit").click()

    # The page's "now" is the tower's clock (NOW): the last 7 days hold every simulated batch.
    _wait(driver, lambda d: "BR101-0007" in d.find_element(By.ID, "br-batch").text, timeout=30, what="the newest batch picked")
    driver.find_element(By.ID, "br-batch").click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f".dash-dropdown-option input[value='{BATCH}']"),
          what="the batch list open")[0].find_element(By.XPATH, "./ancestor::label[contains(@class, 'dash-dropdown-option')]").click()
    # Read by the page in one call: the summary re-renders, an element found before is stale after.
    verdict = _wait(driver, lambda d: d.execute_script(
        "const v = document.getElementById('br-verdict'), s = document.getElementById('br-summary');"
        "return v && s && s.innerText.includes(arguments[0]) ? v.innerText : null;", BATCH),
        timeout=30, what=f"the verdict of {BATCH}")
    assert "Outside its golden-batch limits" in verdict
    timeline = driver.find_element(By.ID, "br-timeline").text
    assert PH in timeline

    # A click on the score where it is highest: the contributions at that moment name pH first.
    # The plot element appears before its data: wait for the score of this batch to be drawn.
    _wait(driver, lambda d: d.execute_script(
        "const gd = document.querySelector('#br-score .js-plotly-plot');"
        "return !!(gd && gd.data && gd.data.length && gd.data[0].y && gd.data[0].y.length > 100);"),
        timeout=30, what="the score plot's data")
    plot = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#br-score .nsewdrag"), what="the score plot")[0]
    peak_x = driver.execute_script(
        "const gd = document.querySelector('#br-score .js-plotly-plot');"
        "const y = gd.data[0].y; let i = 0; y.forEach((v, j) => { if (v > y[i]) i = j; });"
        "const xa = gd._fullLayout.xaxis; return xa.l2p(xa.d2l(gd.data[0].x[i]));")
    ActionChains(driver).move_to_element_with_offset(plot, int(peak_x - plot.size["width"] / 2), 0).click().perform()
    bars = _wait(driver, lambda d: d.execute_script(
        "const gd = document.querySelector('#br-contrib .js-plotly-plot');"
        "return gd && gd.data && gd.data.length === 2 ? gd.data[0].y : null;"), timeout=30, what="the contribution bars")
    assert bars[0] == "ph"
    _artefact(driver, "batch-review.png")
    if os.environ.get("CONTROLTOWER_BATCH_SCREENSHOT"):
        shutil.copy(_artefact(driver, "batch-review-docs.png"), os.environ["CONTROLTOWER_BATCH_SCREENSHOT"])

    # Sign a record: the comment, the variable, the password again.
    driver.find_element(By.ID, "br-comment").send_keys("pH probe reads 0.05 high from 05:50; recalibrated, no CQA impact")
    driver.find_element(By.ID, "br-password").send_keys(PASSWORDS["quinn"])
    driver.find_element(By.ID, "br-sign").click()
    message = _wait(driver, lambda d: (t := d.find_element(By.ID, "br-sign-message").text) and t, timeout=30, what="the signing result")
    assert message.startswith("Recorded DEV-") and "quinn (quality engineer)" in message
    records = _wait(driver, lambda d: (t := d.find_element(By.ID, "br-records").text) and "DEV-" in t and t,
                    what="the record in the list")
    assert "recalibrated" in records and "quinn (quality engineer)" in records
    assert driver.find_element(By.ID, "br-password").get_attribute("value") == "", "the password is not kept"

    # The report link downloads the deviation report, with the record in it.
    href = driver.find_element(By.ID, "br-report").get_attribute("href")
    page = driver.execute_script(
        "const r = await fetch(arguments[0]); return [r.status, await r.text()];", href)
    assert page[0] == 200 and f"Batch deviation report: {BATCH}" in page[1] and "recalibrated" in page[1]
    actions = trail.path.read_text()
    assert '"deviation.record"' in actions and '"batch.report"' in actions
