"""The remediation round's interval: one second unless the environment sets it, in bounds."""

from __future__ import annotations

import argparse

import pytest

from dispatcher.cli.site import ROUND_ENV, drift_options
from dispatcher.service.drift import ROUND_EVERY, RemediationSettings


def _args() -> argparse.Namespace:
    return argparse.Namespace(
        copylist_version=None,
        remediate=True,
        upgrade_event=None,
        upgrade_ttl=None,
        upgrade_spread=None,
    )


def test_the_round_is_one_second_by_default() -> None:
    assert ROUND_EVERY == 1.0
    assert drift_options(_args(), {}).remediation.every == ROUND_EVERY


@pytest.mark.parametrize(("text", "seconds"), [("0.2", 0.2), ("250ms", 0.25), ("2s", 2.0)])
def test_the_environment_sets_the_round(text: str, seconds: float) -> None:
    assert drift_options(_args(), {ROUND_ENV: text}).remediation.every == seconds


@pytest.mark.parametrize("seconds", [0.0, 0.01, 60.0])
def test_a_round_out_of_bounds_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="remediation round"):
        RemediationSettings(every=seconds)
