"""One-time calls (relay.mytpe.oneshot): what a regeneration whose answer was lost tells the operator."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from relay.mytpe.answers import MytpeApiError, OutcomeUnknown
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


async def test_a_regeneration_redirected_every_time_ends_saying_the_last_answer() -> None:
    """Review of ba135fe: a gateway that applies each POST and answers 303 makes every round an outcome unknown;
    after ROUNDS the line said 'no answer', though every call was answered, and not what the answer was."""
    marks = iter(range(100))
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        raise OutcomeUnknown("POST …/regenerate-secret: MyTPE answered 303, a redirect: not followed")

    async def mark() -> object:
        return next(marks)  # each applied: the mask moves

    with pytest.raises(MytpeApiError) as ended:
        await _regenerate(call, mark, Pace(settle=0.05, poll=0.01), lambda line: None)
    assert calls == 3
    assert "no usable answer 3 times (the last: POST …/regenerate-secret: MyTPE answered 303" in str(ended.value)
    assert "a secret nobody holds" in str(ended.value)


async def test_a_lost_answer_whose_read_back_fails_still_says_what_may_have_happened() -> None:
    """Review finding: after a regenerate whose answer was lost, a read-back of MyTPE's mark that failed too ended
    the command with the read's error alone: nothing said MyTPE may sign with a secret nobody holds, nor from when
    to ask for redeliveries."""
    reads = 0

    async def call() -> str:
        raise OutcomeUnknown("POST …/regenerate-secret: no answer (timed out)")

    async def mark() -> object:
        nonlocal reads
        reads += 1
        if reads > 1:
            raise MytpeApiError("GET …/webhook: no answer (4 attempts)")
        return "****aaaa"

    with pytest.raises(MytpeApiError) as ended:
        await _regenerate(call, mark, Pace(settle=1.0, poll=0.01), lambda line: None)
    said = str(ended.value)
    assert said.startswith("GET …/webhook: no answer (4 attempts); asked after a regenerate-secret whose answer")
    assert "a secret nobody holds" in said and re.search(r"reconcile --since \d{4}-\d\d-\d\dT", said), said
    assert "\n" not in said
