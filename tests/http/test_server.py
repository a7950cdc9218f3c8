"""The relay behind a real uvicorn socket (fake publisher): overload, slow and hostile clients."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import orjson
import pytest
import uvicorn
from prometheus_client import generate_latest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relay.dedupe.memory import MemoryDedupeStore
from relay.http.server import BODY_RECEIVED, GuardedHttpTools, unsupported_uvicorn
from relay.metrics import Metrics
from relay.ops.cli import EXIT_STARTUP, main
from relay.settings import Settings
from relay.types import Claim
from tests.fakes import FakePublisher
from tests.helpers import sample, signed_headers
from tests.servers import free_port, running_relay


def now() -> int:
    return int(time.time())


async def until(condition: Callable[[], bool], seconds: float = 30) -> None:
    """Wait for `condition` with a deadline far beyond its usual time; never a fixed sleep."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_beyond_max_in_flight_is_a_fast_503_not_a_queue(settings_factory: Callable[..., Settings]) -> None:
    hold = asyncio.Event()
    publisher = FakePublisher(hold=hold)
    async with (
        running_relay(settings_factory(max_in_flight=2), publisher=publisher) as relay,
        httpx.AsyncClient(timeout=10) as client,
    ):

        async def post(delivery_id: str) -> httpx.Response:
            body, _ = sample(delivery_id=delivery_id)
            headers = signed_headers(body, timestamp=now(), delivery_id=delivery_id)
            return await client.post(relay.webhook_url, content=body, headers=headers)

        held = [asyncio.create_task(post(f"held-{i}")) for i in range(2)]
        await until(lambda: publisher.holding == 2)  # both in the app, waiting on Kafka
        refused = await post("one-too-many")
        still_held = [not task.done() for task in held]
        hold.set()
        held_responses = await asyncio.gather(*held)
        metrics = (await client.get(f"{relay.url}/metrics")).text
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["cause"] == "overloaded"
    assert still_held == [True, True]  # answered while the two held requests still waited: no queue
    assert [r.json()["status"] for r in held_responses] == ["accepted", "accepted"]
    assert 'mytpe_relay_publish_errors_total{reason="overloaded"} 1.0' in metrics
    assert len(publisher.sent) == 2


async def test_a_request_cut_at_the_shutdown_bound_is_answered_503_not_uvicorns_500(
    settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: past uvicorn's timeout_graceful_shutdown (RELAY_SHUTDOWN_TIMEOUT_SECONDS) it cancels the
    requests still running; the CancelledError went past the relay's answers, and uvicorn logged a traceback and
    answered its own text/plain 500, without Retry-After, uncounted: MyTPE documents no retry rule for a 500."""
    publisher = FakePublisher(hold=asyncio.Event())
    metrics, store = Metrics(), MemoryDedupeStore(ttl=60, max_entries=10)
    async with (
        running_relay(settings_factory(), publisher=publisher, dedupe=store, metrics=metrics, grace=0.5) as relay,
        httpx.AsyncClient(timeout=10) as client,
    ):
        body, _ = sample(delivery_id="cut")
        posted = asyncio.create_task(
            client.post(
                relay.webhook_url, content=body, headers=signed_headers(body, timestamp=now(), delivery_id="cut")
            )
        )
        await until(lambda: publisher.holding == 1)
        relay.server.should_exit = True
        response = await posted
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.json()["cause"] == "shutting_down" and publisher.sent == []
    assert not [r for r in caplog.records if "Exception in ASGI application" in r.getMessage()]
    cut = [r for r in caplog.records if getattr(r, "outcome", None) == "unavailable"]
    assert [getattr(r, "cause", None) for r in cut] == ["shutting_down"]
    assert b'mytpe_relay_publish_errors_total{reason="shutting_down"} 1.0' in generate_latest(metrics.registry)
    # the claim released, not committed (guarantees.md §7): MyTPE's retry is taken as new, not as a duplicate
    assert await asyncio.wait_for(store.claim("cut", wait=0), 5) is Claim.NEW


async def test_probes_are_answered_past_uvicorns_connection_ceiling(settings_factory: Callable[..., Settings]) -> None:
    """Review finding: idle keep-alive connections (an ingress's pool) count against uvicorn's limit_concurrency
    (twice RELAY_MAX_IN_FLIGHT), past which it answered every request 503, the kubelet's liveness probe included:
    a busy but healthy pod was restarted, and its load moved to the others. Readiness keeps the ceiling."""
    async with running_relay(settings_factory(max_in_flight=2), publisher=FakePublisher()) as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]  # the ceiling: 2 x 2
        try:
            await until(lambda: len(relay.server.server_state.connections) >= 4)
            async with httpx.AsyncClient(timeout=10) as client:
                health = await client.get(f"{relay.url}/healthz")
                ready = await client.get(f"{relay.url}/readyz")
                metrics = await client.get(f"{relay.url}/metrics")  # not a probe: the ceiling holds
        finally:
            for _, writer in idle:
                writer.close()
    assert health.status_code == 200
    assert (ready.status_code, metrics.status_code) == (503, 503)  # review: a pod there answers webhooks 503


async def raw_exchange(port: int, chunks: list[bytes], pause: float = 0.0) -> bytes:
    """Write `chunks` (pausing between them) while reading the answer; a server that answers early
    and closes may reset the connection under the writer, which is what these tests provoke."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()

    async def read_all() -> None:
        try:
            while chunk := await reader.read(65536):
                received.extend(chunk)
        except ConnectionResetError:
            return

    reading = asyncio.create_task(read_all())
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(pause)
    except (ConnectionResetError, BrokenPipeError):
        pass
    await asyncio.wait_for(reading, 20)
    writer.close()
    return bytes(received)


def request_head(body: bytes, *, length: int | None = None, extra: bytes = b"") -> bytes:
    headers = signed_headers(body, timestamp=now(), delivery_id="raw-1")
    lines = [
        b"POST /webhooks/mytpe HTTP/1.1",
        b"Host: relay",
        b"Connection: close",
        f"Content-Length: {len(body) if length is None else length}".encode(),
    ]
    lines += [f"{name}: {value}".encode() for name, value in headers.items()]
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


async def test_a_stalled_body_gets_a_retryable_503_and_publishes_nothing(
    settings_factory: Callable[..., Settings],
) -> None:
    """503 with Retry-After, not 408: MyTPE documents no rule for which statuses it retries."""
    publisher = FakePublisher()
    async with running_relay(settings_factory(body_timeout_seconds=1.0), publisher=publisher) as relay:
        body, _ = sample()
        port = int(relay.url.rsplit(":", 1)[1])
        answer = await raw_exchange(port, [request_head(body), body[:100]], pause=0.0)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1\r\n" in answer.lower()
    assert b"connection: close\r\n" in answer.lower()  # the rest of the body is never read as a request
    assert b'{"status":"retry","reason":"body_timeout"' in answer
    assert publisher.sent == []


async def test_a_slow_but_steady_body_within_the_bound_is_accepted(settings_factory: Callable[..., Settings]) -> None:
    publisher = FakePublisher()
    async with running_relay(settings_factory(body_timeout_seconds=5.0), publisher=publisher) as relay:
        body, _ = sample()
        port = int(relay.url.rsplit(":", 1)[1])
        pieces = [body[i : i + 200] for i in range(0, len(body), 200)]
        answer = await raw_exchange(port, [request_head(body), *pieces], pause=0.1)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b'"status":"accepted"' in answer
    assert len(publisher.sent) == 1


async def test_an_oversized_body_is_refused_while_streaming(settings_factory: Callable[..., Settings]) -> None:
    publisher = FakePublisher()
    async with running_relay(settings_factory(max_body_bytes=4096), publisher=publisher) as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        body = b'{"x":"' + b"a" * 10_000 + b'"}'
        head = request_head(body, extra=b"").replace(
            f"Content-Length: {len(body)}".encode(), b"Transfer-Encoding: chunked"
        )
        chunked = [
            f"{len(body[i : i + 1000]):x}\r\n".encode() + body[i : i + 1000] + b"\r\n"
            for i in range(0, len(body), 1000)
        ]
        answer = await raw_exchange(port, [head, *chunked, b"0\r\n\r\n"], pause=0.02)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"reason":"body_too_large"' in answer
    assert publisher.sent == []


@pytest.mark.parametrize("path", ["/webhooks/mytpe", "/webhooks/mytpe/nowhere"])
async def test_an_answer_sent_before_the_body_closes_the_connection(
    settings_factory: Callable[..., Settings], path: str
) -> None:
    """Review finding: a 413 from Content-Length (or a 404 unknown source, a 503 overloaded) to a client waiting on
    `Expect: 100-continue` left the connection open while uvicorn still expected the body, so the client's next
    request on it was read as that body and never answered."""
    async with running_relay(settings_factory(max_body_bytes=4096), publisher=FakePublisher()) as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        body, _ = sample()
        head = request_head(body, length=10_000, extra=b"Expect: 100-continue\r\n")
        head = head.replace(b"Connection: close\r\n", b"")
        head = head.replace(b"POST /webhooks/mytpe ", f"POST {path} ".encode())
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)  # the body is held back, as a client waiting for 100 Continue holds it
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 20)  # all of it, up to the server's close
        writer.close()
    assert answer.startswith(b"HTTP/1.1 413 " if path == "/webhooks/mytpe" else b"HTTP/1.1 404 "), answer[:80]
    assert b"connection: close" in answer.lower()


async def test_an_early_answer_to_a_request_whose_body_came_keeps_the_connection(
    settings_factory: Callable[..., Settings],
) -> None:
    """Review of the above: closing after every early answer made each 503 `overloaded` or 404 a reconnect, though
    a body that has come whole is owed nothing (uvicorn reads it)."""
    async with running_relay(settings_factory(), publisher=FakePublisher()) as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        body, _ = sample()
        head = request_head(body).replace(b"Connection: close\r\n", b"")
        head = head.replace(b"POST /webhooks/mytpe ", b"POST /webhooks/mytpe/nowhere ")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 404 ")
    assert b"connection: close" not in answer.lower()


async def test_oversized_headers_are_refused_by_the_server(settings_factory: Callable[..., Settings]) -> None:
    async with running_relay(settings_factory(), publisher=FakePublisher()) as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        body, _ = sample()
        head = request_head(body, extra=b"X-Padding: " + b"a" * 200_000 + b"\r\n")
        answer = await raw_exchange(port, [head[i : i + 8192] for i in range(0, len(head), 8192)], pause=0.01)
    assert answer.startswith(b"HTTP/1.1 4")  # h11 refuses headers past its 16 KiB limit


async def test_a_header_value_that_never_ends_is_refused_at_the_head_bound(
    settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: httptools gathers one header's value in its own buffer and calls `on_header` only when the
    value ends, so the 16 KiB bound never saw a value that did not end: a client pushed 84 MiB into one header
    in 8 s (its copies cost the event loop seconds), held only by the header timeout. The bytes a head takes
    are counted as they arrive: past the bound (and the read that crossed it), 400 and a closed connection.
    (The 400 itself may not reach this client: the server closes with its input unread, so the client's
    kernel may get a reset first.)"""
    caplog.set_level(logging.INFO, logger="relay.http.server")
    prelude = [b"POST /webhooks/mytpe HTTP/1.1\r\nHost: relay\r\nX-Big: "]
    sent, closed = await flooded(settings_factory(header_timeout_seconds=60.0), prelude)
    assert closed, f"{sent} bytes of one header taken, the connection still open"
    assert sent < 1024 * 1024, f"{sent} bytes taken before the refusal"
    assert "refused a request head over 16384 bytes" in caplog.text


async def test_a_chunked_trailer_that_never_ends_is_cut(
    settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: httptools gathers a chunked body's trailer fields in the same buffers as the head's, after
    the head is complete: a trailer value that never ended grew (100 MB cost 49 s of CPU in its copies) until the
    body timeout. What a read inside one body holds besides the body (chunk sizes, trailers) is counted."""
    caplog.set_level(logging.INFO, logger="relay.http.server")
    head = b"POST /webhooks/mytpe HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n"
    sent, closed = await flooded(settings_factory(body_timeout_seconds=60.0), [head, b"1\r\n{\r\n0\r\nX-T: "])
    assert closed, f"{sent} bytes of one trailer taken, the connection still open"
    assert sent < 1024 * 1024, f"{sent} bytes taken before the cut"
    assert "closed a request whose body framing passed" in caplog.text


async def flooded(settings: Settings, prelude: list[bytes]) -> tuple[int, bool]:
    """A relay sent `prelude` (each part in a read of its own), then 64 KiB at a time (`stream_until_closed`)."""
    async with running_relay(settings, publisher=FakePublisher()) as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for part in prelude:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)
        return await stream_until_closed(writer)


async def stream_until_closed(writer: asyncio.StreamWriter) -> tuple[int, bool]:
    """Send 64 KiB at a time, 4 MiB at most, until the server closes the connection: bytes sent, and whether it
    closed (a reset or a broken pipe). The writer is closed after."""
    sent, closed = 0, False
    for _ in range(64):
        try:
            writer.write(b"v" * 65536)
            await writer.drain()
        except OSError:
            closed = True
            break
        sent += 65536
        await asyncio.sleep(0.01)
    writer.close()
    return sent, closed


def one_byte_chunks(delivery_id: str, padding: int, *, close: bool, head_padding: int = 0) -> bytes:
    """A signed webhook whose body, padded, is sent in chunks of one byte: five framing bytes per body byte."""
    document = orjson.loads(sample(delivery_id=delivery_id)[0])
    document["data"]["padding"] = "p" * padding
    body = orjson.dumps(document)
    headers = signed_headers(body, timestamp=now(), delivery_id=delivery_id)
    lines = [b"POST /webhooks/mytpe HTTP/1.1", b"Host: relay", b"Transfer-Encoding: chunked"]
    lines += [b"Connection: close"] if close else []
    lines += [b"X-Pad: " + b"h" * head_padding] if head_padding else []
    lines += [f"{name}: {value}".encode() for name, value in headers.items()]
    chunked = b"".join(b"1\r\n" + body[i : i + 1] + b"\r\n" for i in range(len(body))) + b"0\r\n\r\n"
    return b"\r\n".join(lines) + b"\r\n\r\n" + chunked


async def test_a_chunked_body_in_one_byte_chunks_is_served(settings_factory: Callable[..., Settings]) -> None:
    """The framing bound leaves room for a body sent in the smallest chunks: eight framing bytes per body byte."""
    publisher = FakePublisher()
    async with running_relay(settings_factory(), publisher=publisher) as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        request = one_byte_chunks("one-byte-chunks", 20_000, close=True)  # framing of 100 KB: past 32 KiB alone
        pieces = [request[i : i + 8192] for i in range(0, len(request), 8192)]  # reads inside the body: counted
        answer = await raw_exchange(port, pieces, pause=0.01)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert len(publisher.sent) == 1


async def test_a_request_pipelined_after_one_byte_chunks_is_served(settings_factory: Callable[..., Settings]) -> None:
    """Review of the framing count: a read holding the end of a body sent in one-byte chunks, the next request's
    head and the start of its body was counted against the next request, which was cut."""
    publisher = FakePublisher()
    async with running_relay(settings_factory(), publisher=publisher) as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        first = one_byte_chunks("piped-a", 8_000, close=False)
        second = one_byte_chunks("piped-b", 8_000, close=True, head_padding=15_000)  # a head within the bound
        cut = len(first) + second.index(b"\r\n\r\n") + 4 + 6  # one read: a's last 30 KB, b's head, a chunk of b
        stream = first + second
        pieces = [stream[: len(first) - 30_000], stream[len(first) - 30_000 : cut], stream[cut:]]
        answer = await raw_exchange(port, pieces, pause=0.01)
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer[:300]
    assert len(publisher.sent) == 2


async def test_a_body_discarded_after_an_early_answer_counts_as_framing(
    settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Review of the framing count: after an early answer that keeps the connection (404 at a path the relay
    does not serve), uvicorn discards the rest of the body, which was still counted as body: each discarded byte
    allowed eight bytes of a trailer that never ended. What uvicorn does not keep counts as framing."""
    caplog.set_level(logging.INFO, logger="relay.http.server")
    prelude = [b"POST /nope HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n1000000\r\n"]
    sent, closed = await flooded(settings_factory(body_timeout_seconds=60.0), prelude)  # a 16 MiB chunk: 4 at most
    assert closed and sent < 1024 * 1024, f"{sent} bytes of a discarded body taken, closed: {closed}"
    assert "closed a request whose body framing passed" in caplog.text


async def test_a_pipelined_request_after_a_large_body_is_not_refused_as_an_oversized_head(
    settings_factory: Callable[..., Settings],
) -> None:
    """Review of the head count: a read holding the end of one head, its 40 KB body and the start of the next head
    was counted whole against the next head (its message began inside that read), which was refused 400, its
    connection closed with the first request's answer maybe unsent."""
    publisher = FakePublisher()
    async with running_relay(settings_factory(), publisher=publisher) as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        document = orjson.loads(sample()[0])
        document["data"]["padding"] = "p" * 40_000  # signed like any body: a large but valid delivery
        requests = []
        for n in (1, 2):
            document["delivery_id"] = f"piped-{n}"
            body = orjson.dumps(document)
            headers = signed_headers(body, timestamp=now(), delivery_id=f"piped-{n}")
            lines = [b"POST /webhooks/mytpe HTTP/1.1", b"Host: relay", f"Content-Length: {len(body)}".encode()]
            lines += [f"{name}: {value}".encode() for name, value in headers.items()]
            lines += [b"Connection: close"] if n == 2 else []
            requests.append(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        first, second = requests
        chunks = [first[:5], first[5:] + second[:10], second[10:]]  # head 1 split; head 2 begins in the large read
        answer = await raw_exchange(port, chunks, pause=0.05)
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer[:300]
    assert len(publisher.sent) == 2


async def test_a_head_at_the_bound_sent_in_pieces_is_served(settings_factory: Callable[..., Settings]) -> None:
    """Review of the head count: the raw bytes of a head (method, version, line ends, spaces) are more than the
    bound counts (the URL and each name and value, plus 4), so a head at the bound, its middle in a read of its
    own, was refused when the raw count was held to the same bound."""
    async with running_relay(settings_factory(), publisher=FakePublisher()) as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        counted = len(b"/healthz") + len(b"hostrelayconnectionclosex-pad") + 3 * 4
        head = b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\nX-Pad: "
        head += b"p" * (16384 - counted) + b"\r\n\r\n"  # counted: 16,384 bytes, the bound itself
        answer = await raw_exchange(port, [head[:1], head[1:-1], head[-1:]], pause=0.05)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]


async def test_slow_headers_are_cut_off(settings_factory: Callable[..., Settings]) -> None:
    """uvicorn alone keeps a slowloris connection open forever; the relay's protocol closes it."""
    async with running_relay(settings_factory(header_timeout_seconds=1.0), publisher=FakePublisher()) as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /webhooks/mytpe HTTP/1.1\r\nHost: relay\r\n")
        await writer.drain()
        closed = await asyncio.wait_for(reader.read(), 20)  # EOF: the server closed the connection
        writer.close()
    assert closed == b""


async def test_keep_alive_connection_serves_several_requests(settings_factory: Callable[..., Settings]) -> None:
    publisher = FakePublisher()
    async with (
        running_relay(settings_factory(header_timeout_seconds=1.0), publisher=publisher) as relay,
        httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as client,
    ):
        for _ in range(3):
            body, delivery_id = sample()
            headers = signed_headers(body, timestamp=now(), delivery_id=delivery_id)
            response = await client.post(relay.webhook_url, content=body, headers=headers)
            assert response.json()["status"] == "accepted"
            await asyncio.sleep(0.6)  # idle between requests, within keep-alive, past half the header bound
    assert len(publisher.sent) == 3


async def test_the_server_tells_the_app_when_the_body_is_already_received() -> None:
    """BODY_RECEIVED lets the webhook read a complete body without arming its timer; a body still on its
    way when the app starts must not carry it (that read stays bounded by the body timeout)."""
    seen: list[bool] = []

    async def app(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        if scope["type"] != "http":
            return
        seen.append(BODY_RECEIVED in scope.get("extensions", {}))
        while (await receive()).get("more_body", False):
            pass
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    listener = socket.socket()  # bound here and handed over: no other process can take the port first
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=GuardedHttpTools, lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        for _ in range(300):  # bounded, like running_relay's wait
            if server.started:
                break
            await asyncio.sleep(0.05)
        head = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 10\r\n\r\n"
        whole = await raw_exchange(port, [head + b"0123456789"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + b"01234")
        await until(lambda: len(seen) == 2)  # the app started with half the body: the rest only now
        writer.write(b"56789")
        stalled = await asyncio.wait_for(reader.read(), 20)
        writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        listener.close()
    assert whole.startswith(b"HTTP/1.1 204") and stalled.startswith(b"HTTP/1.1 204")
    assert seen == [True, False]


def test_the_installed_uvicorn_is_one_the_relay_protocol_is_tested_on() -> None:
    # Fails loudly when a uvicorn outside relay.http.server.TESTED_UVICORN is installed (a dependency bump):
    # test GuardedHttpTools on it, then widen the range here and in pyproject.toml together.
    assert unsupported_uvicorn() is None


def test_serve_refuses_an_untested_uvicorn_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setattr(uvicorn, "__version__", "0.99.0")
    env = {
        "RELAY_MYTPE_SECRETS": "whsec_" + "ab" * 24,
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "RELAY_STARTUP_TIMEOUT_SECONDS": "1",
    }
    assert main(["serve"], env) == EXIT_STARTUP
    assert capsys.readouterr().err.splitlines() == [
        "mytpe-relay: cannot start: uvicorn 0.99.0 is not supported: the relay's HTTP protocol is tested on "
        "uvicorn >=0.54,<0.55"
    ]


def test_a_uvicorn_without_a_hook_the_protocol_overrides_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(HttpToolsProtocol, "on_header")
    assert unsupported_uvicorn() == (
        f"uvicorn {uvicorn.__version__} lacks HttpToolsProtocol.on_header, which the relay's protocol overrides"
    )
    assert unsupported_uvicorn("0.53.9") is not None and unsupported_uvicorn("garbage") is not None
