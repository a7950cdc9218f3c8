"""The relay's work beside requests: the sources file's watch, parking's attendant, the drift checks."""

from __future__ import annotations

from collections.abc import Callable

from relay.metrics import Metrics
from relay.sources.attendant import Attendant
from relay.sources.config import Source, SourceSet
from relay.sources.parking import ParkingLot
from relay.sources.registry import SourceRegistry
from relay.sources.remote import DriftWatch


class Upkeep:
    """Each source's series exist from the start; after a reload they follow the file, the sources whose
    secrets changed have their parked requests verified again, and the drift checks follow the sources.

    `forget`: the request path's resolved per-source metric children, dropped after each reload.
    """

    def __init__(
        self,
        *,
        sources: SourceRegistry,
        parking: ParkingLot,
        attendant: Attendant,
        drift: DriftWatch,
        metrics: Metrics,
        forget: list[Callable[[], None]],
        clock: Callable[[], float],
    ) -> None:
        self._sources = sources
        self._parking = parking
        self._attendant = attendant
        self._drift = drift
        self._metrics = metrics
        self._forget = forget
        self._clock = clock
        current = sources.current
        for source in current.by_path.values():
            metrics.prime_source(source.name, len(source.secrets))
            metrics.source_secrets_changed.labels(source.name).set(clock())
        _export_windows(metrics, current)
        self._previous = current
        sources.on_change(self._reloaded)

    def _reloaded(self, current: SourceSet, changed: list[Source]) -> None:
        previous, self._previous = self._previous, current
        _follow_sources(self._metrics, previous, current, changed, self._clock())
        _export_windows(self._metrics, current)
        for forget in self._forget:
            forget()
        # Parked requests are verified again where the secrets changed, and where the instance_id did: an entry
        # kept for it (`wrong_instance`, an instance_id mistyped) is relayed once the id is corrected.
        instance = [s for s in current.by_path.values() if _instance_changed(previous, s) and s not in changed]
        self._attendant.secrets_changed(current, [*changed, *instance])
        self._drift.follow()

    async def start(self) -> None:
        await self._parking.start()
        await self._sources.start()
        self._attendant.start()
        self._drift.start()

    async def stop(self) -> None:
        await self._sources.stop()
        await self._drift.stop()
        await self._attendant.stop()
        await self._parking.stop()


def _instance_changed(previous: SourceSet, source: Source) -> bool:
    before = previous.by_name(source.name)
    return before is not None and before.instance_id != source.instance_id


def _export_windows(metrics: Metrics, current: SourceSet) -> None:
    """Each source's rotation window end as served: what `webhook rotate` waits for on every replica."""
    for source in current.by_path.values():
        until = source.rotation_window_until
        metrics.rotation_window_until.labels(source.name).set(until.timestamp() if until is not None else 0)


def _follow_sources(metrics: Metrics, before: SourceSet, after: SourceSet, changed: list[Source], now: float) -> None:
    names = {source.name for source in after.by_path.values()}
    for old in before.by_path.values():
        if old.name not in names:
            metrics.forget_source(old.name, len(old.secrets))
    for source in changed:
        old_source = before.by_name(source.name)
        if old_source is None:
            metrics.prime_source(source.name, len(source.secrets))
        else:
            metrics.resize_secrets(source.name, len(old_source.secrets), len(source.secrets))
        metrics.source_secrets_changed.labels(source.name).set(now)
