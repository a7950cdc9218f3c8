"""One webhook, from raw bytes to a durable Kafka record: verify (or park), build its record, deliver it
(or keep it in the DLQ). The steps live beside: `verifier.py`, `records.py`, `deliverer.py`."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from relay.errors import KafkaRefused, SignatureError
from relay.mytpe import signatures
from relay.mytpe.payload import Unusable
from relay.mytpe.signatures import HeaderSource, SignedHeaders
from relay.pipeline.deliverer import Deliverer
from relay.pipeline.late_acks import Refused
from relay.pipeline.metrics import DeliveryMetrics
from relay.pipeline.records import KAFKA_REFUSED, Built, Outcome, Record, body_digest, dlq_record, family_record
from relay.pipeline.verifier import Verifier
from relay.routing import Router
from relay.sources.config import Source

if TYPE_CHECKING:
    from relay.tracing.otel import Tracer

logger = logging.getLogger(__name__)


class Relay:
    def __init__(
        self,
        *,
        verifier: Verifier,
        deliverer: Deliverer,
        router: Router,
        metrics: DeliveryMetrics,
        window: int,
        clock: Callable[[], float] = time.time,
        tracer: Tracer | None = None,
    ) -> None:
        self._verifier = verifier
        self._deliverer = deliverer
        self._router = router
        self._metrics = metrics
        self._window = window
        self._clock = clock
        self._tracer = tracer  # None: tracing is off (relay.tracing)

    async def handle(self, headers: HeaderSource, body: bytes, source: Source) -> Outcome:
        """Raises HeaderError, SignatureError, RotationWindow, ParkingError or Unavailable; every other path ends in
        an Outcome."""
        now = self._clock()
        try:
            if self._tracer is None or not self._tracer.sampled():  # off: no tracing call; unsampled: one
                signed = self._verifier.verify(headers, body, source, now=now, window=self._window)
            else:
                with self._tracer.child("verify"):
                    signed = self._verifier.verify(headers, body, source, now=now, window=self._window)
        except SignatureError as exc:
            if exc.reason == "bad_signature":
                await self._verifier.park(headers, body, source, now, exc)
            raise
        return await self.relay_signed(signed, headers, body, source, received_at=datetime.fromtimestamp(now, UTC))

    async def relay_signed(
        self,
        signed: SignedHeaders,
        headers: HeaderSource,
        body: bytes,
        source: Source,
        *,
        received_at: datetime,
        reverified: bool = False,
    ) -> Outcome:
        """Publish a verified delivery to its family topic, or keep it in the DLQ if it is unusable or
        Kafka refuses it for good (`kafka_refused`: too large for the topic, invalid, a policy).
        If the DLQ refuses it too, KafkaRefused is raised: a 503, nothing acknowledged."""
        try:
            delivery_id, record, key = self.build(signed, body, source, received_at=received_at, reverified=reverified)
        except Unusable as unusable:
            return await self.quarantine(
                signed, headers, body, source, unusable.reason, reverified=reverified, key=unusable.key
            )

        def late(error: str) -> Awaitable[Outcome]:  # refused for good after a 503: to the DLQ all the same
            return self.quarantine(
                signed, headers, body, source, KAFKA_REFUSED, reverified=reverified, error=error, key=key
            )

        try:
            return await self.deliver(delivery_id, record, signed, key=key, source=source.name, on_refused=late)
        except KafkaRefused as refused:  # its claim was released: the DLQ publish claims it again
            logger.warning("delivery %s refused by Kafka for good (%s); to the DLQ", delivery_id, refused.detail)
            return await self.quarantine(
                signed, headers, body, source, KAFKA_REFUSED, reverified=reverified, error=refused.detail, key=key
            )

    async def relay_parked(
        self,
        signed: SignedHeaders,
        headers: HeaderSource,
        body: bytes,
        source: Source,
        *,
        received_at: datetime,
        reverified: bool = True,
    ) -> Outcome:
        """`relay_signed` for a parked delivery verified now, in a trace of its own: it is created here (its
        request's trace is not kept with it)."""
        if self._tracer is None:
            return await self.relay_signed(signed, headers, body, source, received_at=received_at, reverified=True)
        attributes = {"mytpe.source": source.name, "mytpe.delivery_id": signed.delivery_id}
        with self._tracer.root("reverify parked delivery", attributes) as span:
            outcome = await self.relay_signed(signed, headers, body, source, received_at=received_at, reverified=True)
            span.set_attribute("mytpe.outcome", outcome.status)
        return outcome

    async def quarantine(
        self,
        signed: SignedHeaders,
        headers: HeaderSource,
        body: bytes,
        source: Source,
        reason: str,
        *,
        reverified: bool = False,
        error: str = "",
        key: str = "",
    ) -> Outcome:
        """Keep a verified but unusable body in the DLQ, with what is needed to re-verify it later.
        `error`: the Kafka error that refused it for good (a `kafka-error` header). `key`: the delivery's own
        dedupe key when the body was read that far (Kafka refused it, or no route takes it): its retry, or a
        replay of it, is then a duplicate; else `quarantine_key`'s (a body whose own id could not be read)."""
        event = headers.getlist(signatures.EVENT)
        dlq = self._router.dlq
        record = dlq_record(
            dlq, signed, event, body, source, reason=reason, reverified=reverified, error=error, tracer=self._tracer
        )
        key = key or quarantine_key(signed.delivery_id, body)
        outcome = await self._deliverer.deliver(
            signed.delivery_id, record, signed, reason, key=key, source=source.name, quarantined=reason
        )
        if outcome.status == "accepted":
            self._metrics.quarantined.labels(reason).inc()
            return Outcome("quarantined", signed.delivery_id, reason, outcome.ack, spooled=outcome.spooled)
        return outcome

    # The steps, one by one, as `handle` takes them and `replay` calls them.

    def verify(self, headers: HeaderSource, body: bytes, source: Source, *, now: float, window: int) -> SignedHeaders:
        return self._verifier.verify(headers, body, source, now=now, window=window)

    def build(
        self,
        signed: SignedHeaders,
        body: bytes,
        source: Source,
        *,
        received_at: datetime,
        reverified: bool = False,
        created_in: str | None = None,
    ) -> Built:
        """`created_in`: the CloudEvent's `traceparent` when it was created before (a DLQ replay)."""
        return family_record(
            self._router,
            signed,
            body,
            source,
            received_at=received_at,
            reverified=reverified,
            tracer=self._tracer,
            created_in=created_in,
        )

    def deliver(
        self,
        delivery_id: str,
        record: Record,
        signed: SignedHeaders,
        reason: str | None = None,
        *,
        key: str = "",
        source: str = "",
        on_refused: Refused | None = None,
    ) -> Awaitable[Outcome]:
        return self._deliverer.deliver(
            delivery_id, record, signed, reason, key=key, source=source, on_refused=on_refused
        )


QUARANTINED = "quarantined:"


def quarantine_key(delivery_id: str, body: bytes) -> str:
    """A quarantine's dedupe key: the header's delivery id, which the signature does not cover, with the body's
    digest, which it does. A signed body replayed with another delivery's id never marks that id done (its
    genuine delivery would be answered `duplicate`); MyTPE's retry of the same delivery is one."""
    return f"{QUARANTINED}{delivery_id}:{body_digest(body)}"
