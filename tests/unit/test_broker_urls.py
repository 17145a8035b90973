"""Several broker URLs: one per cluster node, tried in turn from a rotating start."""

from __future__ import annotations

import pytest

from broker.connection import all_parameters, node_order, parameters
from broker.settings import BrokerSettings

A = "amqp://u:p@10.0.0.1:5672/v"
B = "amqp://u:p@10.0.0.2:5672/v"
C = "amqp://u:p@10.0.0.3:5673/v"


def test_one_url_is_one_node_and_no_cluster() -> None:
    settings = BrokerSettings.from_env(A)
    assert settings.urls == (A,)
    assert not settings.cluster


def test_comma_separated_urls_are_the_nodes_of_a_cluster() -> None:
    settings = BrokerSettings.from_env(f"{A}, {B},{C}")
    assert settings.urls == (A, B, C)
    assert settings.cluster
    assert settings.vhost == "v" and settings.username == "u"
    assert "p@" not in settings.redacted() and settings.redacted().count("***") == 3


def test_cluster_flag_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SETEVNT_CLUSTER", "1")
    assert BrokerSettings.from_env(A).cluster
    monkeypatch.setenv("SETEVNT_CLUSTER", "0")
    assert not BrokerSettings.from_env(f"{A},{B}").cluster


def test_one_node_of_a_cluster_is_still_a_cluster_member() -> None:
    node = BrokerSettings.from_env(f"{A},{B}").node(B)
    assert node.urls == (B,) and node.cluster


@pytest.mark.parametrize(
    "bad",
    [
        f"{A},amqp://other:p@10.0.0.2/v",  # another user
        f"{A},amqp://u:p@10.0.0.2/w",  # another vhost
        f"{A},amqps://u:p@10.0.0.2/v",  # another scheme
        f"{A},http://10.0.0.2/",
    ],
)
def test_nodes_share_scheme_user_and_vhost(bad: str) -> None:
    with pytest.raises(ValueError) as raised:
        BrokerSettings.from_env(bad)
    assert ":p@" not in str(raised.value)


def test_connections_start_at_successive_nodes() -> None:
    urls = (A, B, C)
    starts = [node_order(urls)[0] for _ in range(6)]
    assert set(starts) == set(urls)
    assert starts[:3] == starts[3:]  # a rotation: every node in turn
    assert all(sorted(node_order(urls)) == sorted(urls) for _ in range(3))


def test_blocking_connections_get_every_node_and_select_ones_the_next() -> None:
    settings = BrokerSettings.from_env(f"{A},{B},{C}")
    hosts = [p.host for p in all_parameters(settings)]
    assert sorted(hosts) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert all(p.virtual_host == "v" for p in all_parameters(settings))
    assert {parameters(settings).port for _ in range(3)} == {5672, 5673}
