"""Verification: a request signed by one of its source's secrets, counted by the secret that matched;
a fresh request no secret verifies is handed to parking, and refused for now while a rotation window is open."""

from __future__ import annotations

from collections.abc import Callable

from relay.errors import ParkingError, RotationWindow, SignatureError
from relay.mytpe import signatures
from relay.mytpe.signatures import HeaderSource, SignedHeaders
from relay.pipeline.metrics import VerificationMetrics
from relay.sources.config import Source
from relay.sources.parking import Parked, ParkingLot


class Verifier:
    def __init__(self, *, parking: ParkingLot, metrics: VerificationMetrics, rotation_retry_after: int) -> None:
        self._parking = parking
        self._metrics = metrics
        self._retry_after = rotation_retry_after
        # Hot-path metric children, resolved once (`labels()` takes a lock and builds a key per call).
        self._secret_matched: dict[tuple[str, int], Callable[[], None]] = {}
        self._parked: Callable[[Source], None] = _nothing

    def watch_parks(self, parked: Callable[[Source], None]) -> None:
        """Call `parked(source)`, with the source the request was checked against, after each request parked:
        the attendant's pass for a reload may have run before it (Attendant.parked)."""
        self._parked = parked

    def forget_counts(self) -> None:
        """Drop the resolved per-source children (after a reload changed the sources)."""
        self._secret_matched = {}

    def verify(self, headers: HeaderSource, body: bytes, source: Source, *, now: float, window: int) -> SignedHeaders:
        """The parsed headers of a request signed by one of `source`'s secrets within `window` seconds of `now`."""
        signed = signatures.parse_headers(headers)
        index = signatures.verify(signed, body, source.keys, now=now, tolerance=window)
        count = self._secret_matched.get((source.name, index))
        if count is None:
            count = self._secret_matched[(source.name, index)] = self._metrics.secret_matches.labels(
                source.name, str(index)
            ).inc
        count()
        return signed

    async def park(self, headers: HeaderSource, body: bytes, source: Source, now: float, exc: SignatureError) -> None:
        """Keep a fresh, well-formed request that no secret verifies; raise RotationWindow while one is open, and
        ParkingError (a 503) when the store did not answer, so that MyTPE's retry is parked."""
        signed = signatures.parse_headers(headers)  # it parsed once already: the signature is what failed
        event = headers.getlist(signatures.EVENT)
        kind = event[0][:200] if event else ""
        entry = Parked(source.name, signed.delivery_id, signed.timestamp_text, signed.digest, kind, body, now)
        refused = await self._parking.park(entry)
        if refused is None:
            self._metrics.parked.labels(source.name).inc()
        else:
            self._metrics.parking_refused.labels(source.name, refused).inc()
        if refused in (None, "error"):  # an error may have parked it: a Redis call past its timeout may have run
            self._parked(source)
        if source.rotating(now):
            raise RotationWindow(self._retry_after) from exc
        if refused == "error":  # kept nowhere for sure: a 401 would end a delivery whose secret is on its way
            raise ParkingError from exc


def _nothing(source: Source) -> None:
    """No attendant watches the parks."""
