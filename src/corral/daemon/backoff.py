"""Exponential back-off for a daemon whose database went away: log, wait longer, retry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays `base`, 2*base, 4*base, ... capped at `cap`; `reset()` after a success."""

    base: float
    cap: float
    failures: int = 0
    retry_at: float = 0.0

    def failed(self, now: float) -> float:
        """Record a failure at monotonic time `now`; returns the delay before the next try."""
        delay = min(self.cap, self.base * float(2 ** min(self.failures, 30)))
        self.failures += 1
        self.retry_at = now + delay
        return delay

    def ready(self, now: float) -> bool:
        return now >= self.retry_at

    def reset(self) -> None:
        self.failures = 0
        self.retry_at = 0.0
