"""The alarm console's callback bodies, without a browser: grid rows with state and priority
as text, the critical cue, the actions and the journal table; and the app serving it at /alarms/."""

from __future__ import annotations

import urllib.request

from dash import no_update

from controltower.screen import console, create_app, ids
from controltower.webserver import WebServer
from tests.screen.conftest import NOW
from tests.screen.demo_context import BIO, demo_scene
from tests.screen.test_console_api import FW, TW, journalled

DO = f"{BIO}.br101.dissolved_oxygen"


def _scene(ctx, tmp_path):
    journal = journalled(ctx, tmp_path)
    demo_scene(ctx, NOW)
    return journal


def test_grid_lists_alarms_most_urgent_first_with_text_labels(ctx, tmp_path) -> None:
    _scene(ctx, tmp_path)
    g = console.grid_update(ctx, NOW, "alarms", None, None, None)
    rows = g["rows"]
    assert [(r["tag_id"], r["priority_label"], r["state_label"]) for r in rows] == [
        (FW, "1 ◆ CRITICAL", "● ACTIVE · UNACK"),
        (TW, "3 ■ MEDIUM", "● ACTIVE · UNACK"),
        (DO, "3 ■ MEDIUM", "○ CLEARED · UNACK"),  # returned to normal, still waits for an ack
    ]
    assert rows[0]["where"] == "fill1 / filler1" and rows[0]["value"] == 2.078 and rows[0]["eng_unit"] == "g"
    assert g["count"] == "3"
    assert g["cue_class"] == "critical-cue critical-cue-on critical-cue-new"
    assert g["new_critical"]["ids"] == [rows[0]["id"]] and g["seen"] == [rows[0]["id"]]
    assert g["summary"][0].children == "◆ CRITICAL 1 (1 unack)"

    # Next tick: nothing changed, nothing sent; the critical alarm is no longer new.
    again = console.grid_update(ctx, NOW, "alarms", None, g["key"], g["seen"])
    assert again["rows"] is no_update and again["new_critical"] is None
    assert again["cue_class"] == "critical-cue critical-cue-on"

    only_medium = console.grid_update(ctx, NOW, "alarms", ["medium"], None, None)
    assert [r["tag_id"] for r in only_medium["rows"]] == [TW, DO]
    recent = console.grid_update(ctx, NOW, "recent", None, None, None)
    assert len(recent["rows"]) == 3


def test_actions_change_state_and_report_errors_in_words(ctx, tmp_path) -> None:
    _scene(ctx, tmp_path)
    fw = next(a.id for a in ctx.alerts.alarm_list() if a.tag_id == FW)
    assert console.perform_action(ctx, "ack", None, user="ana") == (False, "Select an alarm in the grid first.")
    ok, text = console.perform_action(ctx, "ack", fw, user="")
    assert not ok and text.startswith("Enter your name first")
    assert console.perform_action(ctx, "ack", fw, user="ana", comment="QA informed") == (
        True, f"Acknowledged {FW} (active-acknowledged)")
    ok, text = console.perform_action(ctx, "ack", fw, user="ana")
    assert not ok and "already acknowledged" in text
    ok, text = console.perform_action(ctx, "shelve", fw, user="ana", minutes=30, reason="")
    assert (ok, text) == (False, "reason: required, a non-empty string")
    ok, text = console.perform_action(ctx, "shelve", fw, user="ana", minutes=30, reason="scale swap")
    assert ok and text == f"Shelved {FW} until 2024-05-01 10:30:00 UTC"
    shelved = console.grid_update(ctx, NOW, "shelved", None, None, None)["rows"]
    assert [(r["tag_id"], r["state_label"], r["shelved"]) for r in shelved] == [(FW, "‖ SHELVED", "2024-05-01 10:30:00")]
    assert console.perform_action(ctx, "unshelve", fw, user="bob")[0]
    assert console.perform_action(ctx, "ack", "nope", user="ana") == (False, "unknown alert 'nope'")

    details = console.selected_details(ctx, fw)
    assert details[0].children[2].children == "◉ ACTIVE · ACK"
    assert "Acknowledged by ana" in details[3].children and "QA informed" in details[3].children


def test_journal_table_and_search(ctx, tmp_path) -> None:
    _scene(ctx, tmp_path)
    fw = next(a.id for a in ctx.alerts.alarm_list() if a.tag_id == FW)
    ctx.alerts.acknowledge(fw, "ana", "Check-weigher drift")
    table, key = console.journal_update(ctx, None, None)
    rows = table.children[1].children
    first = [c.children for c in rows[0].children]
    assert first[1:5] == ["acknowledged", "filler1.fill_weight", "ACTIVE · UNACK → ACTIVE · ACK", "ana"]
    assert first[5] == "Check-weigher drift"
    assert console.journal_update(ctx, None, key) == (no_update, key)  # unchanged file: nothing sent
    table, _ = console.journal_update(ctx, "drift", key)
    assert len(table.children[1].children) == 1
    empty, _ = console.journal_update(ctx, "no such words", None)
    assert empty.children == "No journal entries match."


def test_console_is_served_at_alarms_beside_the_overview(ctx, tmp_path) -> None:
    _scene(ctx, tmp_path)
    app = create_app(ctx, clock=lambda: NOW)
    with WebServer(app, port=0) as web:
        with urllib.request.urlopen(web.url + "/alarms", timeout=10) as resp:
            assert resp.url.endswith("/alarms/") and b"Alarms \xc2\xb7 Demo Pharma" in resp.read()
        with urllib.request.urlopen(web.url + "/alarms/_dash-layout", timeout=10) as resp:
            layout = resp.read().decode()
        assert ids.CONSOLE_GRID in layout and FW in layout
        with urllib.request.urlopen(web.url + "/_dash-layout", timeout=10) as resp:
            overview = resp.read().decode()
        assert ids.PAGE in overview and '"href":"\\u002falarms\\u002f"' in overview  # the shell; Dash escapes "/"
    # The shell routes: its first child is the URL it reads.
    assert app.layout().children[0].id == ids.URL
