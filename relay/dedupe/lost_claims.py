"""The tokens of this process's claims whose outcome is unknown: the call failed or timed out, and Redis may
hold the mark. The sender was answered 503 and nothing publishes that attempt, so when its retry reaches
this process and finds that very token, the mark is released and claimed again at once instead of
blocking the retry until the lease ends. A retry on another replica still waits for the lease."""

from __future__ import annotations

import time


class LostClaims:
    """Remembers each token for one lease (after that Redis has dropped the mark anyway)."""

    def __init__(self, lease: float) -> None:
        self._lease = lease
        self._tokens: dict[str, tuple[str, float]] = {}  # key -> token, when it expires; oldest first

    def add(self, key: str, token: str) -> None:
        now = time.monotonic()
        self._forget_expired(now)
        self._tokens.pop(key, None)  # to the end: the order stays by expiry
        self._tokens[key] = (token, now + self._lease)

    def take(self, key: str, token: str) -> bool:
        """Whether `token` is this key's lost claim; true once per loss."""
        lost = self._tokens.get(key)
        if lost is None or lost[0] != token:
            return False
        del self._tokens[key]
        return True

    def _forget_expired(self, now: float) -> None:
        while self._tokens:
            oldest = next(iter(self._tokens))
            if self._tokens[oldest][1] > now:
                return
            del self._tokens[oldest]
