"""Whether Kafka is back, or down, for the spool's flow: asked while the spool holds deliveries back from it.

`kafka_ok` (relay/spool/spool.py) decides whether a delivery tries Kafka first or goes to the spool; every attempt
to reach Kafka marks it. These mark it when no delivery does: the drainer's probe while Kafka is marked down, and
the end of each drain pass that sent rows.
"""

from __future__ import annotations

import logging
import math
import time

from relay.spool.spool import Spool
from relay.types import Publisher

logger = logging.getLogger("relay.spool.drainer")  # the name these lines had before this module was split out

PROBE_SECONDS = 2.0
"""While Kafka is marked down and no pass asks it, how often the drainer asks its metadata (KafkaProbe), and for
how long at most."""
QUIET_SECONDS = 10.0
"""How long after Kafka last failed to take a record the probe waits before it asks."""


class KafkaProbe:
    """While Kafka is marked down, once QUIET_SECONDS have passed since it last failed to take a record (a direct
    publish, a held row's, a drain pass's), its metadata asked at most every PROBE_SECONDS, when the drainer has
    no pass to send or its pass sent nothing: answered, Kafka is marked up, and records go to it again. Else
    nothing might: a spool that cannot write, or read, takes no row to drain, and every delivery would be its
    503 while Kafka took them. Metadata is not a produce: a Kafka that answers one and not the other costs the
    deliveries of the moment after the probe RELAY_SPOOL_AFTER_SECONDS before they are spooled (held; with a
    spool that cannot write, a 503 whose claim waits for the producer), at most once per QUIET_SECONDS: the
    first of them marks it down again."""

    def __init__(self, spool: Spool, publisher: Publisher) -> None:
        self._spool, self._publisher = spool, publisher
        self._at = -math.inf  # when it last asked (time.monotonic)

    async def __call__(self) -> None:
        now = time.monotonic()
        if self._spool.kafka_ok or now - self._at < PROBE_SECONDS or now - self._spool.kafka_failed < QUIET_SECONDS:
            return
        self._at = now
        if await self.answers() and self._spool.kafka_failed < now:  # no failure while it asked: that one is fresher
            self._spool.mark_kafka(True)

    async def answers(self) -> bool:
        """Whether Kafka answers its metadata: the probe's question, and a drain pass's when no row of it got an
        answer (`after_pass`). Any answer (a row acked, denied or refused, or the metadata) means no outage: the
        pass's rows that got none are their keys' own problem (a topic gone, a partition without a leader), and
        marking Kafka down for them sent every delivery of every key to the spool, for as long as such a row
        stayed. A Kafka that answers metadata and takes no record costs the deliveries of the moment after such a
        pass RELAY_SPOOL_AFTER_SECONDS before they are spooled, as after the probe: the first of them marks it
        down again."""
        try:
            return await self._publisher.ping(timeout=PROBE_SECONDS)
        except Exception as exc:  # says Kafka did not answer; never the drainer's end: asked again later
            logger.warning("spool: asking Kafka whether it answers failed: %s: %s", type(exc).__name__, exc)
            return False

    async def after_pass(self, answered: bool, started: float, *, background: bool) -> bool:
        """After a drain pass begun at `started` (`answered`: a row of it acked, denied or refused): Kafka down
        when none was and, in the background, its metadata does not answer either (`answers`; a drain's deadline
        is not overrun to ask). Up when one was, unless a failure to reach it came since the pass began: that one
        is fresher. Returns whether Kafka answered."""
        if not answered and background:
            answered = await self.answers()
        if not answered:
            self._spool.mark_kafka(False)
        elif self._spool.kafka_failed < started:
            self._spool.mark_kafka(True)
        return answered
