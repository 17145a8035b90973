"""Deciding on a trigger request: validate, authorise, replay or plan it as a storm.

Every accepted request becomes a ledger storm, even for one client, so what happened to
it is in ``setevnt-dispatcher status`` like any storm, and its completion summary is the
ledger's figures once the storm's run has settled every target. Nothing here talks to
the broker: :mod:`dispatcher.service.intake` does, and runs the storms.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from dispatcher.service.policy import Limits, Policy
from dispatcher.service.quotas import Quotas
from dispatcher.store.db import StoreError
from dispatcher.store.idempotency import IdempotencyKeys, Remembered
from dispatcher.store.ledger import PENDING, Ledger, StormRecord
from dispatcher.store.ledger_rows import StormState
from dispatcher.store.registry import Registry
from dispatcher.storms import progress, targets
from dispatcher.storms import storm as storms
from schemas.catalog import DEFAULT_CATALOG, Catalog, ComponentEvent
from schemas.messages import (
    DEFAULT_REQUEST_TTL,
    RefusalReason,
    TriggerRequest,
    TriggerSummary,
)
from schemas.refusals import RequestRefused, read_request

log = logging.getLogger(__name__)

DEFAULT_DELIVERY_WAIT = 30.0
SUMMARY_STATES = (StormState.DONE, StormState.HALTED, StormState.CANCELLED, StormState.FAILED)


@dataclass(frozen=True, slots=True)
class Accepted:
    storm_id: str
    targets: int
    idempotency_key: str | None
    replayed: bool  # answered from the idempotency keys: nothing new was planned


class Desk:
    """Decides on requests; used by the intake's thread only."""

    def __init__(
        self,
        policy: Policy,
        ledger: Ledger,
        registry: Registry,
        keys: IdempotencyKeys,
        catalog: Catalog = DEFAULT_CATALOG,
        quotas: Quotas | None = None,
    ) -> None:
        self.policy = policy
        self.ledger = ledger
        self.registry = registry
        self.keys = keys
        self.catalog = catalog
        self.quotas = quotas or Quotas()

    def decide(self, body: bytes, user_id: str | None) -> Accepted:
        """Accept the request (planning its storm) or raise :class:`RequestRefused`."""
        if not user_id:
            raise RequestRefused(
                RefusalReason.NO_USER_ID,
                "the request has no user_id property: set it to your broker user name",
            )
        request = read_request(body)
        self.policy.authorize(user_id, request)
        limits = self.policy.limits_for(user_id)
        limits.check(request)
        event = self._event(request.event)
        key = request.idempotency_key
        now = time.time()
        remembered = self._remembered(user_id, key, now)
        if remembered is not None:
            return Accepted(remembered.storm_id, remembered.targets, key, replayed=True)
        self.quotas.check_requests(user_id, limits, now)
        client_ids = self._targets(request)
        self.policy.authorize_count(user_id, len(client_ids))
        limits.check_count(len(client_ids), request.rate)
        self.quotas.check_targets(user_id, len(client_ids), limits, now)
        storm = self._plan(user_id, event, client_ids, _options(request, limits), key, now)
        self.quotas.spend(user_id, storm.targets, now)
        log.info(
            "request from %s: storm %s, %s on %d client(s)",
            user_id,
            storm.storm_id,
            event.name,
            storm.targets,
        )
        return Accepted(storm.storm_id, storm.targets, key, replayed=False)

    def _event(self, name: str) -> ComponentEvent:
        found = self.catalog.event(name)
        if found is None:
            raise RequestRefused(
                RefusalReason.UNKNOWN_EVENT,
                f"{name} is not in the catalog; valid: {', '.join(self.catalog.event_names())}",
            )
        return found

    def _remembered(self, user_id: str, key: str | None, now: float) -> Remembered | None:
        if not key:
            return None
        try:
            return self.keys.find(user_id, key, now)
        except StoreError as exc:
            raise _unavailable(exc) from None

    def _targets(self, request: TriggerRequest) -> list[str]:
        spec = targets.TargetSpec(
            clients=request.clients, groups=request.groups, everyone=request.all
        )
        try:
            return targets.resolve(spec, self.registry)
        except targets.TargetError as exc:
            raise RequestRefused(RefusalReason.UNKNOWN_TARGET, str(exc)) from None
        except StoreError as exc:
            raise _unavailable(exc) from None

    def _plan(
        self,
        user_id: str,
        event: ComponentEvent,
        client_ids: list[str],
        chosen: storms.StormOptions,
        key: str | None,
        now: float,
    ) -> StormRecord:
        try:
            storm = storms.plan(self.ledger, event, client_ids, chosen, requested_by=user_id)
            if key:
                self.keys.remember(user_id, key, storm.storm_id, storm.targets, now)
        except StoreError as exc:  # locked or full: the requester may retry (same key)
            raise _unavailable(exc) from None
        return storm


def _options(request: TriggerRequest, limits: Limits) -> storms.StormOptions:
    try:
        return options(request, limits)
    except ValueError as exc:  # a storm's own rule that no cap of the policy caught
        raise RequestRefused(RefusalReason.BAD_REQUEST, str(exc)) from None


def _unavailable(exc: StoreError) -> RequestRefused:
    return RequestRefused(RefusalReason.UNAVAILABLE, f"ledger: {exc}")


def options(request: TriggerRequest, limits: Limits | None = None) -> storms.StormOptions:
    """The storm options a request asks for; what it leaves out takes the defaults, within
    the requester's caps (a request without a rate is paced at ``max_rate``)."""
    limits = limits or Limits()
    max_errors = request.max_errors
    return storms.StormOptions(
        rate=request.rate or limits.max_rate,
        max_errors=storms.Limit(max_errors) if max_errors is not None else None,
        spread=request.spread or 0.0,
        ttl=request.ttl or min(DEFAULT_REQUEST_TTL, limits.max_ttl),
        delivery_wait=request.delivery_wait or min(DEFAULT_DELIVERY_WAIT, limits.max_delivery_wait),
        silent=request.silent,
        force=request.force,
    )


def settled(counts: Mapping[str, int]) -> bool:
    """Every target answered finally, or its command expired: the summary may go."""
    return not any(counts.get(status) for status in PENDING)


def summarize(
    ledger: Ledger, storm_id: str, counts: Mapping[str, int] | None = None
) -> TriggerSummary:
    """The completion summary of a request's storm, from the ledger."""
    storm = ledger.storm(storm_id)
    if storm is None:
        raise ValueError(f"no storm {storm_id} in the ledger")
    figures = ledger.figures(storm_id)
    if counts is not None:  # lapsed commands counted expired (Ledger.counts_at)
        figures = dataclasses.replace(figures, counts=dict(counts))
    view = progress.from_ledger(storm, figures)
    return TriggerSummary(
        storm_id=storm_id,
        event=view.event,
        state=view.state if view.state in SUMMARY_STATES else StormState.FAILED,
        targets=view.targets,
        published=view.published,
        counts={status: n for status, n in sorted(view.counts.items()) if n},
        finished_at=storm.finished_at or time.time(),
        latency_p50=view.percentile(50),
        latency_p95=view.percentile(95),
        latency_p99=view.percentile(99),
        reason=(view.reason or None) and view.reason[:1024],
    )
