"""A loopback TCP proxy that loses a server's answers on demand, for tests of an answer lost after the
command ran.

Every byte goes both ways, except the server's while `losing()` holds: those are dropped. `losing()`
fails unless, inside it, a request went to the server and an answer came back (and was dropped). That
answer says the server read the request, on a connection opened before the block: a test that needs the
command to have run opens its connection first (redis-py's handshake on a new connection would
otherwise be the request whose answer is lost), and checks what the command wrote. A test built on it
does not rest on timing, unlike a server put to sleep, which cannot say whether the command reached it
before the client gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

# After the client closes, how long the server's late answer is still read (and dropped, when losing).
LATE_ANSWER_SECONDS = 10.0


class LossyProxy:
    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._server: asyncio.Server | None = None
        self._losing = False
        self._sent = asyncio.Event()
        self._lost = asyncio.Event()
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"redis://{host}:{port}/0"

    async def __aenter__(self) -> LossyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:  # each connection's pumps end, and its task with them (never cancelled:
            writer.transport.abort()  # asyncio's start_server would log a cancelled callback as an error)
        await asyncio.gather(*self._connections)

    @contextlib.asynccontextmanager
    async def losing(self, *, within: float = 30.0) -> AsyncIterator[None]:
        """Drop the server's answers inside the block; on leaving it, wait (at most `within` seconds) until a
        request sent inside it was answered, and the answer dropped; else fail."""
        self._sent.clear()
        self._lost.clear()
        self._losing = True
        try:
            yield
            try:
                await asyncio.wait_for(asyncio.gather(self._sent.wait(), self._lost.wait()), within)
            except TimeoutError:
                sent = "a request went to the server" if self._sent.is_set() else "no request went to the server"
                raise AssertionError(f"no answer was lost within {within} s: {sent}") from None
        finally:
            self._losing = False

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio runs this callback in a task
        self._connections.add(task)
        self._writers.add(client_writer)
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            self._connections.discard(task)
            self._writers.discard(client_writer)
            await _close(client_writer)
            return
        self._writers.add(server_writer)
        try:
            answers = asyncio.create_task(self._pump(server_reader, client_writer, lossy=True))
            await self._pump(client_reader, server_writer, lossy=False)
            with contextlib.suppress(OSError):  # the client closed: the server's late answer is still read
                server_writer.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(answers), LATE_ANSWER_SECONDS)
            answers.cancel()
            await asyncio.gather(answers, return_exceptions=True)
        finally:
            self._connections.discard(task)
            for writer in (client_writer, server_writer):
                self._writers.discard(writer)
                await _close(writer)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, lossy: bool) -> None:
        with contextlib.suppress(OSError):  # either side went away: this direction ends
            while data := await reader.read(65536):
                if self._losing:
                    (self._lost if lossy else self._sent).set()
                    if lossy:
                        continue
                if not writer.is_closing():
                    writer.write(data)
                    await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
