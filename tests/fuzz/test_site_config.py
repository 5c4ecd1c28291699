"""`parse_site_config` on random trees and on mutations of the demo config: a SiteConfig or a
SiteConfigError whose message starts with the file name, never any other exception.

Each rejected document is counted by the reason of its first error (the key path with its list
indexes generalised, the reason with its quoted values taken out): hypothesis `event()`s, and
the JSON report of a dedicated run (CONTROLTOWER_FUZZ_REPORT, tests/fuzz/strategies.py).

The parser itself costs under a millisecond per document; hypothesis drawing the trees is most
of the time, so a dedicated run splits the properties over processes (`-k <property>`).
"""

from __future__ import annotations

import copy
import re
from collections import Counter

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from controltower.site import SiteConfig, SiteConfigError, load_site_config, parse_site_config
from tests.conftest import REPO
from tests.fuzz.strategies import FUZZ, reason_of, write_report

PATH = "fuzz-site.yaml"
DEMO = yaml.safe_load((REPO / "config" / "demo-site.yaml").read_text(encoding="utf-8"))

# What YAML can produce: scalars (with dates and keys that are not strings), lists and mappings.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), st.dates(), st.datetimes(),
    st.sampled_from(["opcua", "mqtt", "json", "sparkplug_b", "batched_json", "{site}", "mqtt://h:1", "0", ""]),
)
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8) | st.integers() | st.none() | st.booleans(), children, max_size=4),
    ),
    max_leaves=20,
)


REJECTIONS: Counter[str] = Counter()
INDEX = re.compile(r"\[\d+\]")
BYTES = re.compile(r"0x[0-9a-f]+|#x[0-9a-f]+")  # the byte or character quoted: one kind for all


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    write_report(REJECTIONS)


def rejection_kind(message: str, path: str = PATH) -> str:
    """`fuzz-site.yaml: sites[0].areas: Input should be a valid list (got 5)` -> `sites[i].areas:
    Input should be a valid list (got …)`: one kind per key path and reason."""
    where, _, reason = message.split("\n", 1)[0].removeprefix(f"{path}: ").partition(": ")
    if not reason or " " in where:  # not a key path: a message about the whole file (YAML, encoding)
        text = BYTES.sub("…", f"{where}: {reason}" if reason else where)
        return reason_of(text).replace("UTF…", "UTF-8")
    return f"{INDEX.sub('[i]', where)[:60]}: {reason_of(reason)}"


def check(data) -> None:
    try:
        result = parse_site_config(data, PATH)
    except SiteConfigError as exc:
        assert str(exc).startswith(PATH), str(exc)
        kind = rejection_kind(str(exc))
        REJECTIONS[kind] += 1
        event(kind)
    else:
        assert isinstance(result, SiteConfig)
        REJECTIONS["accepted"] += 1


@FUZZ
@given(data=trees)
def test_random_trees(data) -> None:
    check(data)


@FUZZ
@given(top=st.dictionaries(st.sampled_from(sorted(DEMO)) | st.text(max_size=8), trees, max_size=5))
def test_random_values_under_the_real_top_level_keys(top: dict) -> None:
    check(top)


def _paths(node, prefix=()):
    """Every (path to a container, key or index) in the tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield (prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (prefix, i)
            yield from _paths(v, (*prefix, i))


PATHS = list(_paths(DEMO))


@FUZZ
@given(mutations=st.lists(st.tuples(st.sampled_from(PATHS), st.sampled_from(["delete", "replace"]), trees),
                          min_size=1, max_size=4))
def test_mutations_of_the_demo_config(mutations) -> None:
    data = copy.deepcopy(DEMO)
    for (parent_path, key), action, value in mutations:
        parent = data
        try:
            for step in parent_path:
                parent = parent[step]
            parent[key]  # an earlier mutation may have removed it
        except (KeyError, IndexError, TypeError):
            continue
        if action == "delete":
            del parent[key]
        else:
            parent[key] = value
    check(data)


def test_the_demo_config_itself_parses() -> None:
    assert isinstance(parse_site_config(copy.deepcopy(DEMO), PATH), SiteConfig)


def test_a_file_that_is_not_utf8_or_nested_too_deeply_is_a_site_config_error(tmp_path) -> None:
    """Found fuzzing the loader with the input as the file (tests/fuzz/atheris_decoders.py): both
    used to escape as UnicodeDecodeError and RecursionError."""
    cases = {"latin1.yaml": ("enterprise: Caf\xe9\n".encode("latin-1"), "not UTF-8 text: byte 0xe9 on line 1"),
             "deep.yaml": (b"[" * 100_000, "nested too deeply")}
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(SiteConfigError, match=reason) as info:
            load_site_config(path)
        assert str(info.value).startswith(str(path))
