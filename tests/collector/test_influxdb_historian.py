"""The InfluxDB historian's parts that need no server: token, quoting, statements, repr."""

from __future__ import annotations

import pytest

from collector.sinks import HistorianError, open_historian
from collector.sinks.influxdb import (
    InfluxDbHistorian,
    quote_identifier,
    quote_string,
    resolve_token,
    select_statement,
)
from controltower.site import InfluxDbHistorianConfig

SECRET = "s3cr3t-T0ken-value"


def test_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("CT_TEST_TOKEN", SECRET)
    assert resolve_token("CT_TEST_TOKEN", None) == SECRET
    monkeypatch.delenv("CT_TEST_TOKEN")
    assert resolve_token("CT_TEST_TOKEN", None) is None


def test_token_file_wins_and_is_stripped(tmp_path, monkeypatch):
    monkeypatch.setenv("CT_TEST_TOKEN", "from-env")
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    assert resolve_token("CT_TEST_TOKEN", token_file) == SECRET


def test_a_missing_token_file_names_the_file(tmp_path):
    with pytest.raises(HistorianError, match="no-such-token"):
        resolve_token(None, tmp_path / "no-such-token")


def test_repr_never_shows_the_token():
    for api in ("v1", "v2"):
        h = InfluxDbHistorian(url="http://127.0.0.1:1", api=api, token=SECRET)
        try:
            assert SECRET not in repr(h) and "token" in repr(h)
        finally:
            h.close()


def test_scrub_removes_the_token_its_parts_and_basic_auth_form():
    h = InfluxDbHistorian(url="http://127.0.0.1:1", api="v1", token="operator:" + SECRET)
    try:
        basic = h._auth_headers()["Authorization"]
        text = h._scrub(f"user operator:{SECRET} / {SECRET} / {basic}")
        assert SECRET not in text and basic.split()[1] not in text
    finally:
        h.close()


def test_open_historian_resolves_the_token_from_config(monkeypatch):
    monkeypatch.setenv("CT_TEST_TOKEN", SECRET)
    config = InfluxDbHistorianConfig(
        kind="influxdb", url="http://127.0.0.1:1", api="v1", bucket="db/rp", token_env="CT_TEST_TOKEN"
    )
    h = open_historian(config, "/nonexistent")
    try:
        assert isinstance(h, InfluxDbHistorian)
        assert (h.database, h.retention_policy) == ("db", "rp")
        assert h._auth_headers() == {"Authorization": f"Token {SECRET}"}
    finally:
        h.close()


def test_influxql_quoting():
    assert quote_identifier('we"ird\\name') == '"we\\"ird\\\\name"'
    assert quote_string("it's a \\ tag") == "'it\\'s a \\\\ tag'"


def test_select_statement():
    q = select_statement("process_values", ["a.b", "c'd"], 10, 20)
    assert q == (
        'SELECT * FROM "process_values" WHERE ("tag_id" = \'a.b\' OR "tag_id" = \'c\\\'d\') '
        "AND time >= 10 AND time < 20"
    )
    assert select_statement("m", ["x"], 0, None, retention_policy="autogen").startswith(
        'SELECT * FROM "autogen"."m" WHERE'
    )
    assert select_statement("m", ["x"], 5, None).endswith("time >= 5")
