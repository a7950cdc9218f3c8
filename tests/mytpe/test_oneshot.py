"""One-time calls (relay.mytpe.oneshot): what a regeneration whose answer was lost tells the operator."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from relay.mytpe.answers import OutcomeUnknown
from relay.mytpe.oneshot import CLOCKS, Pace, _regenerate


async def test_a_regeneration_whose_answer_was_lost_says_since_when_deliveries_may_need_redelivering() -> None:
    """Review finding: between the lost answer's secret and the one installed after it, MyTPE signs with a secret
    nobody holds; a delivery whose retries all fall in that span is parked and never verified. Nothing said so, nor
    from when to ask MyTPE to redeliver."""
    answers: list[str | Exception] = [OutcomeUnknown("POST …/regenerate-secret: no answer (timed out)"), "whsec_new"]
    marks = iter(["****aaaa", "****bbbb", "****cccc"])
    said: list[str] = []

    async def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def mark() -> object:
        return next(marks)

    before = datetime.now(UTC)
    secret = await _regenerate(call, mark, Pace(settle=1.0, poll=0.01), said.append)
    assert secret == "whsec_new"
    (hint,) = [line for line in said if "reconcile" in line]
    since = re.search(r"--since (\S+)`", hint)
    assert since is not None and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", since.group(1)), hint
    # Review of this: the time was taken once the call had timed out, a timeout after MyTPE may have acted. It is
    # the time the lost call was sent, less CLOCKS for MyTPE's clock: never after the call started.
    at = datetime.fromisoformat(since.group(1).replace("Z", "+00:00"))  # to the second: a second either side
    assert before - CLOCKS - timedelta(seconds=1) <= at <= before - CLOCKS + timedelta(seconds=1)


async def test_a_regeneration_answered_at_once_says_nothing_of_lost_deliveries() -> None:
    said: list[str] = []

    async def call() -> str:
        return "whsec_new"

    async def mark() -> object:
        return "****aaaa"

    assert await _regenerate(call, mark, Pace(settle=1.0, poll=0.01), said.append) == "whsec_new"
    assert said == []
