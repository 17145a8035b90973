"""Enrollment never replaces a broker user by accident, and limits what an enrolled one may hold."""

from __future__ import annotations

import contextlib
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest

from broker.management import Management
from broker.settings import BrokerSettings
from dispatcher.access.enroll import AGENT_LIMITS, AlreadyEnrolled, enroll
from dispatcher.access.services import SERVICE_LIMITS, enroll_service
from tests.conftest import management

pytestmark = pytest.mark.broker


@pytest.fixture
def names(vhost: str) -> Iterator[list[str]]:
    """Unique broker user names (users are broker-wide), deleted afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        with contextlib.suppress(OSError):  # a test that failed early made fewer
            management("DELETE", f"/users/{urllib.parse.quote(name, safe='')}")


def _name(names: list[str], kind: str) -> str:
    name = f"enroll-{kind}-{uuid.uuid4().hex[:8]}"
    names.append(name)
    return name


def test_enroll_refuses_an_enrolled_client_unless_rotated(amqp_url: str, names: list[str]) -> None:
    settings = BrokerSettings(url=amqp_url)
    api = Management.for_broker(settings)
    client = _name(names, "client")
    first = enroll(settings, api, client)
    with pytest.raises(AlreadyEnrolled, match="already enrolled: --rotate"):
        enroll(settings, api, client)
    rotated = enroll(settings, api, client, rotate=True)
    assert rotated.password != first.password
    user = api.user(client)
    assert user is not None and user["limits"] == AGENT_LIMITS


def test_enroll_never_replaces_a_user_with_tags(amqp_url: str, names: list[str]) -> None:
    settings = BrokerSettings(url=amqp_url)
    api = Management.for_broker(settings)
    admin = _name(names, "admin")
    api.put_user(admin, "kept", tags="administrator")
    for rotate in (False, True):
        with pytest.raises(AlreadyEnrolled, match="tags administrator: it is not a setevnt"):
            enroll(settings, api, admin, rotate=rotate)
        with pytest.raises(AlreadyEnrolled, match="tags administrator"):
            enroll_service(settings, api, admin, rotate=rotate)
    user = api.user(admin)
    assert user is not None and user["tags"] in (["administrator"], "administrator")


def test_enroll_service_limits_and_refuses_a_second_time(amqp_url: str, names: list[str]) -> None:
    settings = BrokerSettings(url=amqp_url)
    api = Management.for_broker(settings)
    service = _name(names, "service")
    enroll_service(settings, api, service)
    with pytest.raises(AlreadyEnrolled, match=r"service .* is already enrolled"):
        enroll_service(settings, api, service)
    user = api.user(service)
    assert user is not None and user["limits"] == SERVICE_LIMITS
