"""The dedupe script's answer, read back per operation (pure logic: the script itself runs against a real
redis-server in tests/integration/test_redis_batch.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import NoPermissionError, OutOfMemoryError, RedisError, ResponseError

from relay.dedupe.redis_script import _reply, replies

# One reply line as the script writes it: '+' or '-' and a value with no newline (the script replaces them) and no
# lone surrogate (Redis answers in UTF-8: hypothesis drew one once, and `.encode()` failed);
# values of '+', '-' and spaces often, so that they start with a sign or hold one.
VALUE = st.text(alphabet="+- a", max_size=6) | st.text(
    alphabet=st.characters(codec="utf-8", blacklist_characters="\n"), max_size=12
)
LINE = st.tuples(st.sampled_from("+-"), VALUE)


def _same(got: list[str | RedisError], expected: list[str | RedisError]) -> bool:
    return [(type(value), str(value)) for value in got] == [(type(value), str(value)) for value in expected]


@given(st.lists(LINE, min_size=1, max_size=8), st.booleans())
def test_every_answer_reads_as_each_line_alone_would(lines: list[tuple[str, str]], as_bytes: bool) -> None:
    """An answer without errors is read by a shorter path: it must give what reading line by line gives,
    for answers with errors too (a '-' line after a '+' line, a value that starts with '-' or '+')."""
    text = "\n".join(sign + value for sign, value in lines)
    expected = [_reply(sign + value) for sign, value in lines]
    assert _same(replies(text.encode() if as_bytes else text, len(lines)), expected)


def test_each_error_keeps_its_kind() -> None:
    got = replies("+new\n-OOM command not allowed\n+done\n-NOPERM no\n-WRONGTYPE bad", 5)
    assert got[0] == "new" and got[2] == "done"
    assert isinstance(got[1], OutOfMemoryError) and isinstance(got[3], NoPermissionError)
    assert type(got[4]) is ResponseError and str(got[4]) == "WRONGTYPE bad"


ANSWERS = {"fewer": "+new", "more": "+new\n+1\n+1", "none": None, "int": 3, "empty": b""}


@pytest.mark.parametrize("answer", ANSWERS.values(), ids=ANSWERS.keys())
def test_an_answer_of_another_count_fails_the_batch(answer: object) -> None:
    with pytest.raises(RedisError, match="replies to 2 operations"):
        replies(answer, 2)
