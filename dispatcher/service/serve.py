"""The dispatcher service as one process: collector, intake and remediation threads, and
the metrics endpoint; it runs until a signal or until one of its threads ends."""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server

from broker.settings import BrokerSettings
from broker.watchdog import DEFAULT_STALL_TIMEOUT, Watchdog
from dispatcher.access import keys
from dispatcher.service.collector import Collector
from dispatcher.service.crew import Crew, Member
from dispatcher.service.drift import RemediationSettings, Remediator
from dispatcher.service.drift_metrics import DriftMetrics
from dispatcher.service.intake import Intake, IntakeSettings
from dispatcher.service.ledger_metrics import LedgerMetrics
from dispatcher.service.metrics import DispatcherMetrics, known_events
from dispatcher.service.node_resend import NodeResender
from dispatcher.service.policy import Policy
from dispatcher.service.recorder import Recorder
from dispatcher.service.resumer import Resumer
from dispatcher.service.senders import Senders
from dispatcher.service.takeover import Takeover
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import Ledger
from dispatcher.store.registry import RegistrySettings, StoreRegistry
from dispatcher.store.site import Site

log = logging.getLogger("setevnt.dispatcher")


@dataclass(frozen=True, slots=True)
class DriftOptions:
    """What ``serve`` was told: the version to seed, and how to remediate."""

    seed_version: str | None
    remediation: RemediationSettings


def serve(
    settings: BrokerSettings,
    addr: str,
    port: int,
    stores: tuple[DbSettings, float] | None = None,
    *,
    policy: Policy | None = None,
    drift: DriftOptions | None = None,
    signing: keys.Signing | None = None,
    take_over_storms: bool = False,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
) -> int:
    registry = CollectorRegistry()
    signing = signing or keys.Signing.from_env()
    if signing.signer is None:
        log.warning("commands go unsigned: only agents with allow_unsigned = true run them")
    else:
        log.info(
            "signing commands with the key whose public key is %s", signing.signer.public_text()
        )
    database, offline_after = stores or (DbSettings.from_env(), RegistrySettings().offline_after)
    drift = drift or DriftOptions(None, RemediationSettings())
    metrics = DispatcherMetrics(registry, known_events([drift.remediation.event]))
    registry.register(LedgerMetrics(database))
    registry.register(DriftMetrics(database, offline_after, drift.remediation.event))
    with (
        StoreRegistry(database, RegistrySettings(offline_after)) as fleet,
        Ledger(database) as ledger,
    ):
        _seed_site(database, drift.seed_version)
        recorder = Recorder(settings, fleet, ledger, metrics, signing=signing)
        log.info("fleet registry and ledger in %s", database)
        senders = Senders.from_env(settings.username)
        collector = Collector(settings, metrics, recorder, senders=senders)
        intake_settings = IntakeSettings(
            database,
            policy or Policy.load(),
            RegistrySettings(offline_after),
            signing=signing,
        )
        watchdog = Watchdog(stall_timeout, "setevnt-dispatcher serve")
        intake = Intake(settings, intake_settings, metrics, watchdog=watchdog)
        resumer = None
        if take_over_storms:
            resumer = Resumer(settings, database, RegistrySettings(offline_after), signing)
            log.info("taking over operators' storms whose process died")
        takeover = Takeover(database, intake, operators=resumer)
        crew = [
            Member("collector", collector.run, collector.stop),
            _intake(intake),
            Member("takeover", takeover.run, _stopping(takeover, resumer)),
            _node_resender(NodeResender(settings, database, signing, hooks=metrics)),
        ]
        remediator = _remediator(settings, database, fleet.settings, drift, metrics, signing)
        if remediator is not None:
            crew.append(Member("remediation", remediator.run, remediator.stop))
        return _serve(crew, registry, addr, port, watchdog)


def _stopping(takeover: Takeover, resumer: Resumer | None) -> Callable[[], None]:
    """Stop taking storms over, then stop those taken (they end interrupted)."""

    def stop() -> None:
        takeover.stop()
        if resumer is not None:
            resumer.stop()

    return stop


def _intake(intake: Intake) -> Member:
    return Member("intake", intake.run, intake.stop)


def _node_resender(resender: NodeResender) -> Member:
    return Member("waiting-node", resender.run, resender.stop)


def _seed_site(database: DbSettings, version: str | None) -> None:
    """The configured CopyListVersion counts only when none is stored (`site set-version`
    changes the stored one, which must survive a restart of the service)."""
    with Site(database) as site:
        if version is not None and site.seed_copylist_version(version, "serve configuration"):
            log.info("site CopyListVersion set to %s from the configuration", version)
        current = site.copylist_version()
    if current is not None and current.value != version:
        log.info("site CopyListVersion is %s (set by %s)", current.value, current.set_by)


def _remediator(
    settings: BrokerSettings,
    database: DbSettings,
    fleet: RegistrySettings,
    drift: DriftOptions,
    metrics: DispatcherMetrics,
    signing: keys.Signing,
) -> Remediator | None:
    if not drift.remediation.enabled:
        return None
    remediator = Remediator(
        settings, database, fleet, drift.remediation, hooks=metrics, signing=signing
    )
    log.info("remediating CopyListVersion drift with %s", drift.remediation.event.name)
    return remediator


def _serve(
    members: list[Member], registry: CollectorRegistry, addr: str, port: int, watchdog: Watchdog
) -> int:
    """Run the service's threads until a signal, or until one of them ends; a watched
    loop that stops coming back ends the process (broker.watchdog), even while stopping."""
    crew = Crew()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        crew.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if sys.platform != "win32":
        # kill -USR1 prints every thread's stack: where a service that will not stop waits.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    log.info("metrics on http://%s:%d/metrics", addr, server.server_port)
    watchdog.start()
    try:
        for member in members:
            crew.start(member)
        return crew.wait()
    finally:
        watchdog.close()
        server.shutdown()
