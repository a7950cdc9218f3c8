"""A one-line progress bar on a terminal (stderr), redrawn at most every `every` seconds. A terminal that is gone
(its session closed: EIO) stops the bar, never the command."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TextIO


class Progress:
    def __init__(
        self,
        total: int | None,
        *,
        stream: TextIO,
        enabled: bool,
        every: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self._stream = stream
        self._enabled = enabled
        self._every = every
        self._clock = clock
        self._started = clock()
        self._drawn = float("-inf")

    def update(self, done: int, counts: Mapping[str, int]) -> None:
        now = self._clock()
        if self._enabled and now - self._drawn >= self._every:
            self._drawn = now
            self._draw("\r" + self.render(done, counts, now - self._started) + "\x1b[K")

    def finish(self, done: int, counts: Mapping[str, int]) -> None:
        if self._enabled:
            self._draw("\r" + self.render(done, counts, self._clock() - self._started) + "\x1b[K\n")

    def _draw(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except OSError:  # the terminal is gone (a closed ssh session): no more bar, and the command goes on
            self._enabled = False

    def render(self, done: int, counts: Mapping[str, int], elapsed: float, width: int = 24) -> str:
        tally = " ".join(f"{name} {count}" for name, count in sorted(counts.items()))
        rate = f"{done / elapsed:,.0f}/s" if elapsed > 0 else "-"
        if not self.total:
            return f"{done:,} done  {rate}  {tally}"
        share = min(done / self.total, 1.0)
        bar = "#" * round(share * width)
        return f"[{bar:<{width}}] {done:,}/{self.total:,} {share:4.0%}  {rate}  {tally}"
