"""The original tool's syntax, ``setevnt [/q] [cq | COMPONENT_EVENT]``, and the catalog."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from schemas.catalog import DEFAULT_CATALOG, Catalog, Component, ComponentEvent
from schemas.syntax import Invocation, UsageError, parse_invocation, resolve_event

CCIM = ComponentEvent("CCIM32", "STARTCYCLE")
COPY_QUEUE = ComponentEvent("CQMGR32", "STARTCYCLE")


def _usage_error(words: list[str], catalog: Catalog = DEFAULT_CATALOG) -> str:
    with pytest.raises(UsageError) as caught:
        parse_invocation(words, catalog)
    return str(caught.value)


def test_no_arguments_cycle_ccim_and_copy_queue() -> None:
    assert parse_invocation([]) == Invocation((CCIM, COPY_QUEUE), silent=False)
    assert [e.name for e in parse_invocation([]).events] == [
        "CCIM32_STARTCYCLE",
        "CQMGR32_STARTCYCLE",
    ]


def test_cq_cycles_copy_queue_only() -> None:
    assert parse_invocation(["cq"]) == Invocation((COPY_QUEUE,), silent=False)


@pytest.mark.parametrize("flag", ["/q", "/Q"])
def test_q_alone_cycles_the_defaults_silently(flag: str) -> None:
    assert parse_invocation([flag]) == Invocation((CCIM, COPY_QUEUE), silent=True)


@pytest.mark.parametrize("words", [["/q", "cq"], ["cq", "/q"]])
def test_q_with_cq(words: list[str]) -> None:
    assert parse_invocation(words) == Invocation((COPY_QUEUE,), silent=True)


def test_component_event() -> None:
    close = ComponentEvent("CLISVCL", "CLOSE")
    assert parse_invocation(["CLISVCL_CLOSE"]) == Invocation((close,), silent=False)
    assert parse_invocation(["/q", "CLISVCL_CLOSE"]) == Invocation((close,), silent=True)
    assert str(close) == "CLISVCL_CLOSE"


def test_lower_case_event_is_an_error_with_a_hint() -> None:
    message = _usage_error(["ccim32_startcycle"])
    assert "case-sensitive" in message
    assert "did you mean CCIM32_STARTCYCLE" in message
    for name in ["cq", *DEFAULT_CATALOG.event_names()]:
        assert name in message


def test_unknown_event_lists_the_valid_names() -> None:
    message = _usage_error(["FOO_BAR"])
    assert "FOO_BAR" in message
    assert "case-sensitive" not in message
    for name in ["cq", *DEFAULT_CATALOG.event_names()]:
        assert name in message


@pytest.mark.parametrize(
    "words",
    [["CCIM32_STARTCYCLE", "CQMGR32_STARTCYCLE"], ["cq", "CLISVCL_CLOSE"], ["/q", "cq", "cq"]],
)
def test_two_words_are_an_error(words: list[str]) -> None:
    assert "at most one" in _usage_error(words)


def test_usage_error_is_a_value_error() -> None:
    assert issubclass(UsageError, ValueError)


def test_site_component_added_with_extended() -> None:
    site = Component("SITEINV32", "Site inventory", frozenset({"nt"}), ("STARTCYCLE", "REFRESH"))
    catalog = DEFAULT_CATALOG.extended([site])
    refresh = ComponentEvent("SITEINV32", "REFRESH")
    assert parse_invocation(["SITEINV32_REFRESH"], catalog) == Invocation((refresh,), False)
    assert resolve_event("SITEINV32_REFRESH", catalog) == refresh
    assert "SITEINV32_REFRESH" in _usage_error(["SITEINV32_CLOSE"], catalog)
    _usage_error(["SITEINV32_REFRESH"])  # the default catalog is unchanged


def test_site_component_from_config() -> None:
    entries: list[Mapping[str, object]] = [
        {"name": "SITEINV32", "title": "Site inventory", "platforms": ["nt"]},
        {"name": "SITEMON32", "events": ["STARTCYCLE"]},
    ]
    catalog = DEFAULT_CATALOG.extended(Catalog.components_from_config(entries))
    invocation = parse_invocation(["/q", "SITEINV32_CLOSE"], catalog)
    assert invocation == Invocation((ComponentEvent("SITEINV32", "CLOSE"),), silent=True)
    monitor = catalog.component("SITEMON32")
    assert monitor is not None
    assert (monitor.title, monitor.events) == ("SITEMON32", ("STARTCYCLE",))
    assert monitor.runs_on("nt")
    assert monitor.runs_on("win9x")
    assert not catalog.has_event("SITEMON32", "CLOSE")


def test_site_may_redefine_a_default_component() -> None:
    ccim = Component("CCIM32", "CCIM, NT only here", frozenset({"nt"}))
    catalog = DEFAULT_CATALOG.extended([ccim])
    assert catalog.component("CCIM32") == ccim
    assert len(list(catalog)) == len(list(DEFAULT_CATALOG))


def test_client_services_are_platform_specific() -> None:
    nt = DEFAULT_CATALOG.component("CLISVCL")
    win9x = DEFAULT_CATALOG.component("CLISVC95")
    assert nt is not None
    assert win9x is not None
    assert nt.runs_on("nt")
    assert not nt.runs_on("win9x")
    assert win9x.runs_on("win9x")
    assert not win9x.runs_on("nt")


def test_default_catalog() -> None:
    names = ["CLISVCL", "CLISVC95", "CCIM32", "SMSAPM32", "SMSMON32", "CQMGR32"]
    assert [c.name for c in DEFAULT_CATALOG] == names
    assert len(DEFAULT_CATALOG.event_names()) == 2 * len(names)
    assert DEFAULT_CATALOG.event("CCIM32_STARTCYCLE") == CCIM
    assert DEFAULT_CATALOG.event("ccim32_startcycle") is None
    assert "CCIM32" in DEFAULT_CATALOG


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "siteinv32"},
        {"name": "32SITEINV"},
        {"name": "SITEINV32", "platforms": ["win32"]},
        {"name": "SITEINV32", "platforms": []},
        {"name": "SITEINV32", "platforms": "nt"},
        {"name": "SITEINV32", "events": ["refresh"]},
    ],
    ids=repr,
)
def test_bad_component_config(entry: Mapping[str, object]) -> None:
    with pytest.raises(ValueError, match="component"):
        Catalog.components_from_config([entry])


def test_a_component_defined_twice_is_an_error() -> None:
    ccim = Component("CCIM32", "CCIM", frozenset({"nt"}))
    with pytest.raises(ValueError, match="twice"):
        Catalog([ccim, ccim])
