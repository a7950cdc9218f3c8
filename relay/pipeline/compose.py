"""The one place the pipeline's collaborators are built and wired: for the app, `replay` and tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relay.pipeline.deliverer import Deliverer
from relay.pipeline.metrics import PipelineMetrics
from relay.pipeline.relay import Relay
from relay.pipeline.verifier import Verifier
from relay.settings import Settings
from relay.sources.attendant import Attendant
from relay.sources.config import legacy
from relay.sources.factory import parking_from_settings
from relay.sources.parking import ParkingLot
from relay.sources.registry import SourceRegistry
from relay.spool.spooler import Spooler
from relay.types import DedupeStore, Publisher

if TYPE_CHECKING:
    from relay.tracing.otel import Tracer


@dataclass(frozen=True, slots=True)
class Pipeline:
    relay: Relay
    verifier: Verifier
    deliverer: Deliverer
    sources: SourceRegistry
    parking: ParkingLot
    attendant: Attendant


def compose(
    settings: Settings,
    *,
    publisher: Publisher,
    dedupe: DedupeStore,
    metrics: PipelineMetrics,
    sources: SourceRegistry | None = None,
    parking: ParkingLot | None = None,
    spooler: Spooler | None = None,
    clock: Callable[[], float] = time.time,
    parking_interval: float = 5.0,
    tracer: Tracer | None = None,
) -> Pipeline:
    """The pipeline for `settings`; `sources` and `parking` default to those the settings name. `tracer`:
    the request path's spans (None: tracing off)."""
    if sources is None:
        default = legacy(settings.secrets) if settings.secrets else None
        poll = settings.sources_poll_seconds
        sources = SourceRegistry(
            default=default, file=settings.sources_file, metrics=metrics, poll_seconds=poll, clock=clock
        )
    parking = parking if parking is not None else parking_from_settings(settings)
    router = settings.router()
    verifier = Verifier(parking=parking, metrics=metrics, rotation_retry_after=settings.rotation_retry_after_seconds)
    deliverer = Deliverer(
        settings,
        publisher=publisher,
        dedupe=dedupe,
        metrics=metrics,
        topics=router.topics(),
        spooler=spooler,
        clock=clock,
        tracer=tracer,
    )
    relay = Relay(
        verifier=verifier,
        deliverer=deliverer,
        router=router,
        metrics=metrics,
        window=settings.replay_window_seconds,
        clock=clock,
        tracer=tracer,
    )
    attendant = Attendant(
        parking,
        sources,
        metrics,
        verify=verifier.verify,
        relay=relay.relay_parked,
        clock=clock,
        interval=parking_interval,
    )
    verifier.watch_parks(attendant.parked)
    return Pipeline(relay, verifier, deliverer, sources, parking, attendant)
