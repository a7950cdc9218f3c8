"""The sandbox's sender and lifecycles, against a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import orjson
import pytest

from relay.mytpe import samples, signatures
from relay.mytpe.sandbox import Sandbox


class Receiver:
    """A loopback HTTP server answering the statuses it is given in turn, recording what it got."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
        body = await reader.readexactly(int(headers["content-length"]))
        self.got.append((headers, body))
        status = self.statuses.pop(0) if self.statuses else 200
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    made = Receiver([])
    made.server = await asyncio.start_server(made.handle, "127.0.0.1", 0)
    yield made
    made.server.close()


async def test_three_attempts_each_signed_with_the_secret_of_its_moment(receiver: Receiver) -> None:
    sandbox = Sandbox(attempts=3, backoff=0.2)
    hook = sandbox.add_instance("i-1")
    hook.url, hook.secret = receiver.url, "whsec_" + "1" * 48
    receiver.statuses = [500, 503, 500]
    (delivery,) = sandbox.emit("i-1", 1, seed=1, disorder=0, repeat=0)
    sandbox.deliver(delivery)
    # The first attempt is logged in the step that starts its 0.2 s backoff; a poll every 10 ms is due
    # first in the loop's timer heap, however late the loop runs: the swap lands between attempts 1 and 2.
    for _ in range(3000):  # bounded: 30 s
        if sandbox.log:
            break
        await asyncio.sleep(0.01)
    assert len(sandbox.log) == 1
    hook.secret = "whsec_" + "2" * 48  # regenerated between the first and second attempts
    await sandbox.drain()
    assert [a.status for a in sandbox.log] == [500, 503, 500] and delivery.status == "failed"
    signed = [h["x-mytpepay-signature"] for h, _ in receiver.got]
    stamps = [h["x-mytpepay-timestamp"] for h, _ in receiver.got]
    assert signed[0] == signatures.sign("whsec_" + "1" * 48, stamps[0], delivery.body)
    assert signed[1] == signatures.sign("whsec_" + "2" * 48, stamps[1], delivery.body)
    assert {h["x-mytpepay-delivery-id"] for h, _ in receiver.got} == {delivery.id}


async def test_a_2xx_ends_the_delivery(receiver: Receiver) -> None:
    sandbox = Sandbox(attempts=3, backoff=0.01)
    hook = sandbox.add_instance("i-1")
    hook.url, hook.secret = receiver.url, "whsec_" + "1" * 48
    receiver.statuses = [503, 200]
    (delivery,) = sandbox.emit("i-1", 1, seed=2, disorder=0, repeat=0)
    sandbox.deliver(delivery)
    await sandbox.drain()
    assert delivery.status == "succeeded" and delivery.attempts == 2


def test_lifecycles_follow_mytpe_and_share_their_entity() -> None:
    rng = random.Random(3)
    for _ in range(200):
        events = samples.lifecycle(rng)
        if events[0].startswith("transaction."):
            assert events[:2] == ["transaction.pending", "transaction.processing"] and len(events) == 3
            assert events[2].split(".")[1] in samples.TRANSACTION_ENDINGS
        else:
            assert events[0] == "pay_link.created" and events[-1].split(".")[1] in samples.PAY_LINK_ENDINGS
    sandbox = Sandbox()
    sandbox.add_instance("inst-9")
    made = sandbox.emit("inst-9", 60, seed=4, disorder=0, repeat=0)
    first = orjson.loads(made[0].body)
    assert first["data"]["instance"]["id"] == "inst-9"
    family = first["event"].split(".")[0]
    entity = first["data"][family]["id"]
    same = [orjson.loads(d.body) for d in made if entity.encode() in d.body]
    assert len(same) >= 2 and same[0]["event"].endswith((".pending", ".created"))


def test_disorder_and_repeats_are_what_was_asked() -> None:
    sandbox = Sandbox()
    sandbox.add_instance("i")
    made = sandbox.emit("i", 100, seed=5, disorder=0.2, repeat=0.1)
    ids = [d.id for d in made]
    assert 100 < len(ids) < 130 and len(set(ids)) == 100
    ordered = sandbox.emit("i", 100, seed=5, disorder=0, repeat=0)
    assert [d.id for d in ordered] != ids[:100]  # some neighbours swapped
