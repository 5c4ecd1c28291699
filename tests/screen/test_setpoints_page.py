"""The setpoints page's pieces without a server: the line page links each unit that has
setpoints (and only those) to it, and the setpoint table shows Change buttons only to a role
that may write, and says why a setpoint cannot be changed."""

from __future__ import annotations

from controltower.screen import line
from controltower.screen.setpoints import CHANGE, setpoints_table
from tests.screen.conftest import NOW


def _find(component, predicate) -> list:
    found = [component] if predicate(component) else []
    children = getattr(component, "children", None)
    for child in children if isinstance(children, list) else [children] if children is not None else []:
        if hasattr(child, "to_plotly_json"):
            found += _find(child, predicate)
    return found


def test_the_line_page_links_units_with_setpoints(ctx) -> None:
    page = line.layout(ctx, NOW, "lyon.usp.bio1")
    links = _find(page, lambda c: str(getattr(c, "id", "")).startswith("setpoints-"))
    assert [(a.id, a.href) for a in links] == [
        ("setpoints-lyon.usp.bio1.br101", "/setpoints/?unit=lyon.usp.bio1.br101")]
    assert not _find(line.layout(ctx, NOW, "lyon.ff.fill1"), lambda c: str(getattr(c, "id", "")).startswith("setpoints-"))


ROWS = [
    {"id": "temperature", "description": "", "node_id": "ns=2;s=x.sp.temperature", "unit": "degC", "low": 30.0,
     "high": 40.0, "source": "plant-opcua", "value": 37.0, "status": "Good", "writable": True, "error": None},
    {"id": "ph", "description": "", "node_id": "ns=2;s=x.sp.ph", "unit": "pH", "low": 6.5, "high": 7.5,
     "source": "plant-opcua", "value": None, "status": "BadNodeIdUnknown", "writable": False,
     "error": "ns=2;s=x.sp.ph: cannot read it: BadNodeIdUnknown"},
]


def test_change_buttons_only_for_a_role_that_may_write() -> None:
    buttons = lambda table: _find(table, lambda c: isinstance(getattr(c, "id", None), dict))
    assert [b.id for b in buttons(setpoints_table(ROWS, True))] == [{"type": CHANGE, "setpoint": "temperature"}]
    assert buttons(setpoints_table(ROWS, False)) == []
    assert "BadNodeIdUnknown" in str(setpoints_table(ROWS, True).to_plotly_json())
