"""The setpoint change in a real headless Chromium, authentication on, against the simulator:
an operator logs in, opens a unit's setpoints from the line page's link, clicks Change, types
the new value and a reason, sees the confirmation with the old value, the new value and the
unit, confirms, and sees the value read back; the plant follows and the audit trail has it.
A quality engineer sees the values but no Change button."""

from __future__ import annotations

import pytest

from tests.integration.test_screen_chromium import _artefact, _wait, browser  # noqa: F401 (fixture)
from tests.screen.test_auth_http import PASSWORDS
from tests.screen.test_setpoint_api import BIO, plant, tower  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration


def _login(driver, url: str, path: str, user: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(url + path)
    _wait(driver, lambda d: d.find_elements(By.ID, "login-username"), what="the login page")
    driver.find_element(By.ID, "login-username").send_keys(user)
    driver.find_element(By.ID, "login-password").send_keys(PASSWORDS[user])
    driver.find_element(By.ID, "login-submit").click()


def test_an_operator_confirms_a_setpoint_change_in_the_browser(tower, plant, browser) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    url, _, _, trail = tower
    driver = browser
    _login(driver, url, "/line/lyon.usp.bio1", "olga")
    link = _wait(driver, lambda d: d.find_elements(By.ID, f"setpoints-{BIO}"), timeout=30, what="the Setpoints link")
    link[0].click()
    row = _wait(driver, lambda d: d.find_elements(By.XPATH, "//tr[td//span[text()='temperature']]"), timeout=30,
                what="the setpoint table")[0]
    assert "37 degC" in row.text and "30 … 40 degC" in row.text
    row.find_element(By.XPATH, ".//button[text()='Change']").click()
    _wait(driver, lambda d: d.find_element(By.ID, "sp-editor").is_displayed(), what="the editor")
    driver.find_element(By.ID, "sp-new").send_keys("38")
    driver.find_element(By.ID, "sp-reason").send_keys("production phase: +1 degC per the campaign plan")
    driver.find_element(By.ID, "sp-review").click()
    box = _wait(driver, lambda d: (b := d.find_element(By.ID, "sp-confirm-box")).is_displayed() and b,
                what="the confirmation")
    assert driver.find_element(By.ID, "sp-confirm-old").text == "37 degC"
    assert driver.find_element(By.ID, "sp-confirm-new").text == "38 degC"
    assert "campaign plan" in box.text
    assert plant.setpoints(BIO)["temperature"] == 37.0, "nothing is written before the confirmation"
    _artefact(driver, "setpoint-confirm.png")
    driver.find_element(By.ID, "sp-confirm").click()
    result = _wait(driver, lambda d: (t := d.find_element(By.ID, "sp-result").text) and t, timeout=30,
                   what="the write's result")
    assert result.startswith("Written: temperature of lyon.usp.bio1.br101 from 37 degC to 38 degC"), result
    assert plant.setpoints(BIO)["temperature"] == 38.0
    _wait(driver, lambda d: "38 degC" in d.find_element(By.ID, "sp-value-temperature").text, timeout=15,
          what="the table showing the new value")
    last = [r for r in trail.records() if r["action"] == "setpoint.write"][-1]
    assert (last["actor"], last["old"], last["new"]) == ("olga", 37.0, 38.0)

    # A quality engineer reads the setpoints but has no Change button.
    _login(driver, url, f"/setpoints/?unit={BIO}", "quinn")
    _wait(driver, lambda d: "38 degC" in d.find_element(By.ID, "sp-table").text, timeout=30, what="the values")
    assert not driver.find_elements(By.XPATH, "//button[text()='Change']")
    assert "may not change setpoints" in driver.find_element(By.TAG_NAME, "main").text
