"""When the daemon's next cycle starts: at its interval, or soon after news.

The daemon runs one cycle at a time on a thread of its own (`Daemon.run_forever`).
After each it asks `Pace.after` for the next tick of its interval, and while it
waits, news from the feed (`corral.store.news`) can bring the start forward to
`Pace.soonest`:

* **never overlapping**: a cycle starts only when the previous one has ended; news
  that comes during a cycle is kept (one flag, however much came) for one follow-up
  cycle, since the running cycle may have read the store before that news was
  written;
* **a minimum gap** (`--min-gap`, 0.5 s by default) between the end of one cycle and
  the start of a cycle brought forward by news: a feed committing ten batches a
  second would otherwise keep the daemon cycling back to back.  With cycles of C
  seconds it bounds the daemon to C / (C + gap) of a core, and a fact written just
  after a cycle read the store waits for that cycle, the gap and the next cycle:
  about gap + 2 C at worst, when nothing else holds the daemon up (docs/benchmarks.md,
  "Reaction time", measures what it is beside a busy feed);
* **the interval stays the upper bound**: with no news the next cycle starts one
  interval after the previous one started, as before; a cycle longer than the
  interval makes the ticks that fell in it skip (logged and counted as overruns),
  never stack.

News from a standby daemon's listener is ignored (it only wants the lease, which
its interval tries for); news goes unheard only as a hint does: the interval
catches whatever a lost notification or an unreadable news file missed.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from corral.store.news import NewsListener

log = logging.getLogger("corral.daemon")

#: The default minimum gap between a cycle's end and a cycle news brings forward.
DEFAULT_MIN_GAP = 0.5


@dataclass(frozen=True)
class Pace:
    """The daemon's clock arithmetic, on monotonic seconds (pure)."""

    interval: float
    min_gap: float = DEFAULT_MIN_GAP

    def after(self, started: float, ended: float) -> tuple[float, int]:
        """The next tick after a cycle that ran from `started` to `ended`, and how many
        ticks fell while it ran (overruns: skipped, not stacked)."""
        ticks = max(1, math.floor((ended - started) / self.interval) + 1)
        return started + ticks * self.interval, ticks - 1

    def soonest(self, tick: float, ended: float) -> float:
        """When news makes the next cycle start: at once, but no sooner than `min_gap`
        after the last cycle ended, and never later than the tick."""
        return min(tick, ended + self.min_gap)


class NewsWatch:
    """A thread that waits on a `NewsListener` and calls `on_news` when news comes.

    A listener that fails (the database away, its connection cut) is tried again
    every `retry` seconds; the first news after that is reported at once, since some
    may have been missed (`PgNews`), and the interval covers the time between."""

    def __init__(self, listener: NewsListener, on_news: Callable[[], None], stop: threading.Event,
                 *, retry: float = 5.0) -> None:
        self.listener, self.on_news, self.stop, self.retry = listener, on_news, stop, retry
        self.thread = threading.Thread(target=self._run, name="corral-news", daemon=True)
        self._failing = False

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                heard = self.listener.wait(0.5)
            except Exception as err:
                if not self._failing:
                    log.warning("not hearing the feed's news (%s: %s): cycles keep to the interval until it is "
                                "back", type(err).__name__, str(err).splitlines()[0] if str(err) else "")
                    self._failing = True
                self.stop.wait(self.retry)
                continue
            if self._failing:
                log.info("hearing the feed's news again")
                self._failing = False
            if heard:
                self.on_news()

    def close(self, timeout: float = 2.0) -> None:
        """After `stop` is set: wait for the thread (it wakes every half second), then
        close the listener."""
        if self.thread.is_alive():
            self.thread.join(timeout)
        self.listener.close()
