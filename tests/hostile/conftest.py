"""The hostile suite's fixtures: one site per module, and the module's figures tables.

A site is started once per module (a vhost, ``serve``, an enrolled agent, a service
user) and the genuine traffic runs once before any batch, so the series it brings out
exist before the first snapshot. The tables of every batch of the module are printed
when the module ends and written to ``<basetemp>/hostile-figures/<module>.md``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hostile.batch import Batch, render
from tests.hostile.requester import Requests
from tests.hostile.site import Site, hostile_site


@pytest.fixture(scope="module")
def site(
    broker: None, dispatcher_signing_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    with hostile_site(tmp_path_factory.mktemp("hostile")) as running:
        warm = running.genuine()
        assert warm.worked, f"the site does not work before any attack: {warm}"
        yield running


@pytest.fixture(scope="module")
def service(site: Site) -> Iterator[Requests]:
    """The attacking service user's connection, its replies kept for the module."""
    with Requests(site.service_url, site.service) as requests:
        yield requests


@pytest.fixture(scope="module")
def figures(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Batch]]:
    batches: list[Batch] = []
    yield batches
    if not batches:
        return
    text = render(batches)
    directory = tmp_path_factory.getbasetemp() / "hostile-figures"
    directory.mkdir(exist_ok=True)
    path = directory / f"{request.module.__name__.rsplit('.', 1)[-1]}.md"
    path.write_text(text)
    print(f"\n{text}\nfigures written to {path}")
