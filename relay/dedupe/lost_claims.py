"""The tokens of this process's claims whose outcome is unknown: the call failed or timed out, and Redis may
hold the mark. The sender was answered 503 and, with the store failing closed, nothing publishes that
attempt, so when its retry reaches this process and finds one of those tokens, the mark is released and
claimed again at once instead of blocking the retry until the lease ends. A retry on another replica
still waits for the lease. With RELAY_DEDUPE_FAIL_OPEN the attempt goes on publishing without its claim,
so nothing is remembered (relay.dedupe.factory): its retry waits for the lease, as before."""

from __future__ import annotations

import time

# At most this many tokens are remembered; beyond, the oldest is forgotten (its retry waits for the lease).
MAX_TOKENS = 100_000


class LostClaims:
    """Remembers each token for one lease (after that Redis has dropped the mark anyway), every token of a
    key: a retry whose own claim was lost too (it found the first mark and wrote nothing) adds a second one
    without making the first, which Redis holds, unrecognisable."""

    def __init__(self, lease: float, *, max_tokens: int = MAX_TOKENS) -> None:
        self._lease = lease
        self._max = max_tokens
        self._tokens: dict[tuple[str, str], float] = {}  # (key, token) -> when it expires; oldest first

    def add(self, key: str, token: str) -> None:
        now = time.monotonic()
        self._forget_expired(now)
        while len(self._tokens) >= self._max:
            del self._tokens[next(iter(self._tokens))]
        self._tokens[(key, token)] = now + self._lease

    def take(self, key: str, token: str) -> bool:
        """Whether `token` is one of this key's lost claims, not yet expired; true once per loss."""
        expires = self._tokens.pop((key, token), None)
        return expires is not None and expires > time.monotonic()

    def __len__(self) -> int:
        return len(self._tokens)

    def _forget_expired(self, now: float) -> None:
        while self._tokens:
            oldest = next(iter(self._tokens))
            if self._tokens[oldest] > now:
                return
            del self._tokens[oldest]
