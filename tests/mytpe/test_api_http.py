"""MyTPE API client against real loopback HTTP servers: what leaves the machine, and to whom."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.mytpe.api import Credentials, MytpeApi, MytpeApiError

KEY, SECRET = "key-7Qp", "api-secret-3Zr"


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request with `status` (and `location`), recording the headers it got."""

    status = 200
    location = ""
    got: list[dict[str, str]]

    def _answer(self) -> None:
        type(self).got.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(self.status)
        if self.location:
            self.send_header("Location", self.location)
        body = b'{"success": true, "data": {"webhook_url": null, "has_secret": false}}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(status: int, location: str = "") -> tuple[http.server.ThreadingHTTPServer, type[Recorder]]:
    handler = type("Handler", (Recorder,), {"status": status, "location": location, "got": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


@pytest.fixture
def elsewhere() -> Iterator[tuple[str, type[Recorder]]]:
    server, handler = serve(200)
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_not_followed_and_the_credentials_stay_home(
    elsewhere: tuple[str, type[Recorder]], status: int
) -> None:
    target, recorded = elsewhere
    server, _ = serve(status, f"{target}/api/v2/mytpe-pay/i-1/webhook")
    try:
        api = MytpeApi(
            f"http://127.0.0.1:{server.server_address[1]}", Credentials(lambda: KEY, lambda: SECRET), allow_http=True
        )
        try:
            followed = await api.legacy_get("i-1")
        except MytpeApiError as exc:
            line = str(exc)
    finally:
        server.shutdown()
        server.server_close()
    assert [(h.get("x-api-key"), h.get("x-api-secret")) for h in recorded.got] == [], "credentials sent elsewhere"
    assert "followed" not in locals(), "the redirect was followed"
    assert f"MyTPE answered {status}" in line and "redirect" in line and "not followed" in line
    assert "\n" not in line and KEY not in line and SECRET not in line


async def test_an_unreadable_credential_file_is_one_line(elsewhere: tuple[str, type[Recorder]], tmp_path: Path) -> None:
    target, recorded = elsewhere
    gone = tmp_path / "api-key"
    credentials = Credentials(lambda: gone.read_text().strip(), lambda: SECRET)
    with pytest.raises(MytpeApiError, match="cannot read the MyTPE API key: No such file or directory"):
        await MytpeApi(target, credentials, allow_http=True).legacy_get("i-1")
    assert recorded.got == []
