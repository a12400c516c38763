"""Output tokens per second over the last few seconds, per (backend, model).

Time is cut into bins of window/20. Content chunks count live as one token each while a request
streams; when it ends, its runtime-reported token count replaces that estimate, spread over the
bins its chunks fell in. A request whose runtime never reports counts is withdrawn: unknown stays
unknown.
"""

from __future__ import annotations

from collections.abc import Iterator

BINS_PER_WINDOW = 20
RING = 2 * BINS_PER_WINDOW  # corrections may land up to one window back


class TokenWindow:
    def __init__(self, seconds: float = 5.0) -> None:
        self.seconds = seconds
        self.width = seconds / BINS_PER_WINDOW
        self._bins: dict[tuple[str, str], list[float]] = {}
        self._stamp: dict[tuple[str, str], list[int]] = {}  # absolute bin number in each slot

    def add(self, key: tuple[str, str], t: float, tokens: float) -> None:
        """``tokens`` at time ``t`` (once per upstream read: one lookup, no helper call)."""
        bins = self._bins.get(key)
        if bins is None:
            bins = self._bins[key] = [0.0] * RING
            self._stamp[key] = [-1] * RING
        n = int(t / self.width)
        i = n % RING
        stamp = self._stamp[key]
        if stamp[i] != n:
            if stamp[i] > n:  # older than the ring keeps
                return
            stamp[i] = n
            bins[i] = 0.0
        bins[i] += tokens

    def settle(self, key: tuple[str, str], times: list[float], counts: list[int], tokens: int | None) -> None:
        """Replace the live one-token-per-chunk estimate with the exact count (``times``: the
        reads that carried content, ``counts``: their chunks)."""
        if not times:
            return
        per_chunk = (tokens / sum(counts) - 1.0) if tokens is not None else -1.0
        if per_chunk == 0.0:
            return
        for t, n in zip(times, counts):
            self.add(key, t, per_chunk * n)

    def rates(self, now: float) -> Iterator[tuple[tuple[str, str], float]]:
        first = int((now - self.seconds) / self.width) + 1
        last = int(now / self.width)
        for key, bins in list(self._bins.items()):
            stamp = self._stamp[key]
            total = sum(bins[i] for i in range(RING) if first <= stamp[i] <= last)
            yield key, max(0.0, total) / self.seconds
