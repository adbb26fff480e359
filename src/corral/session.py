"""A session: the running side of policy evaluation, kept from one cycle to the next.

A `PolicySet` is configuration; a session is what runs it: the rule engine with its
working memory, the farm kept in memory and brought up to date by the rows that
changed (`corral.live.LiveFarm`), and with it the cooldowns read from the log.  The
daemon holds one session for its life, and so do a `corral.Corral` API object and a
simulated night; `corral plan` makes one for a single dry cycle.

A hot reload swaps the policy set (`swap`): a new engine is built for the new policies
and fed every candidate from the farm already in memory, instead of reading the whole
farm from the database again.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from corral.evaluate import make_evaluator
from corral.live import Dirty, LiveFarm, no_dirt
from corral.plan import Cooldowns
from corral.policy.model import Policy
from corral.policyset import PolicySet
from corral.ports import FarmSource, IncrementalEvaluator
from corral.states import Kind

#: Builds the evaluator of a session for the enabled policies (the daemon's runs the
#: engine in a child process: `corral.daemon.isolated.IsolatedEvaluator`).
EvaluatorFactory = Callable[[Sequence[Policy]], IncrementalEvaluator]

#: A session re-reads the whole farm this often, to heal anything a change read missed
#: (frame dependencies, which are not tracked incrementally, for one).
FULL_READ_EVERY = 60


class Session:
    """One policy set at a time, its evaluator, and the farm and cooldowns in memory.

    `keep_live`: hold the farm in memory from the first cycle on, even a dry one (the
    daemon and the benchmarks); otherwise a dry run reads the store without writing
    anything, not even the change-tracking counter, and the first committing cycle
    starts the live farm.

    `full_read_after`: seconds (by `monotonic`) that must also have passed since the
    last whole read before the next one, besides FULL_READ_EVERY cycles.  The daemon
    gives FULL_READ_EVERY of its intervals (30 min by default), so that cycles news
    brings forward, a few every second beside a busy feed, do not make the whole read,
    seconds at 100k frames and tens of seconds at 1M, come round every half minute
    (docs/benchmarks.md, "Reaction time"); the healing keeps the pace it had before news.
    None: the count alone (a simulated night, the API)."""

    def __init__(
        self,
        policy_set: PolicySet,
        *,
        engine: str = "durable",
        evaluator_factory: EvaluatorFactory | None = None,
        keep_live: bool = False,
        full_read_after: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy_set = policy_set
        self.engine_name = engine
        self.keep_live = keep_live
        self._factory = evaluator_factory
        self._evaluator: IncrementalEvaluator | None = None
        #: The farm kept in memory between cycles, and the cooldowns with it.
        self.live: LiveFarm | None = None
        self.cycles_since_full = 0
        self.full_read_after = full_read_after
        self._monotonic = monotonic
        self._full_at = -math.inf  # monotonic() at the last whole read
        #: The evaluator's `starts` when it was last sent every candidate (a restarted
        #: engine child, or a new engine after a swap, knows nothing).
        self._fed_starts = 0
        self._swapped = False

    @property
    def policy_set(self) -> PolicySet:
        return self._policy_set

    @property
    def evaluator(self) -> IncrementalEvaluator:
        """Built on first use, for the enabled policies."""
        if self._evaluator is None:
            active = list(self._policy_set.active)
            self._evaluator = self._factory(active) if self._factory else make_evaluator(active, self.engine_name)
        return self._evaluator

    def swap(self, policy_set: PolicySet) -> None:
        """Put `policy_set` in force from the next cycle on.  The old evaluator is closed
        and a new one built for the new policies; the farm in memory is kept and, next
        cycle, every candidate of it is sent to the new engine (no whole read of the
        store), with the cooldowns' window read again in case it grew."""
        if policy_set == self._policy_set:
            return
        self._policy_set = policy_set
        self._close_evaluator()
        if self.live is not None:
            self.live.retune(policy_set.spread, keep_recent=policy_set.reads_recent)
        self._swapped = True

    def refresh(self, source: FarmSource, log_since: datetime) -> tuple[LiveFarm, Dirty, Cooldowns | None]:
        """Bring the farm in memory up to date: a whole read the first time (or after
        rows were deleted, or every FULL_READ_EVERY cycles, see `full_read_after`), else only the changed
        rows; and with them the cooldowns, as of the same moment (the log since
        `log_since` with a whole read, else only the actions logged since the last
        read).  Returns the farm, the entities whose facts must be built and sent to
        the engine this cycle, and the cooldowns (None: read them separately)."""
        live = self.live
        engine = self.evaluator
        engine.ready()  # an isolated engine (re)starts here if it has to
        if live is not None and not self._whole_read_due():
            changes, mark, log = source.read_changes(live.mark, log_since=log_since, log_after=live.log_after)
            if changes is not None:
                self.cycles_since_full += 1
                live.note_log(log)
                dirty = live.apply(changes, mark)
                if self._swapped or engine.starts != self._fed_starts:
                    self._feed_all(live, dirty)
                return live, dirty, live.cooldowns if log is not None else None
        # The farm lives as long as the daemon: keep the cyclic garbage collector from
        # walking its millions of objects again and again.  While they are created it
        # is paused (the whole cycle runs in `corral.cycle.collector_paused`: otherwise it
        # would run a collection every few hundred allocations, each walking more of
        # them, and the read of 100k frames took twice as long); once they are made,
        # freeze them (a full collection of a 1M-frame farm costs about a second, at a
        # moment no cycle chooses).
        farm, mark, log = source.read_farm_marked(log_since=log_since)
        ps = self._policy_set
        live = LiveFarm(farm, mark, spread=ps.spread, keep_recent=ps.reads_recent)
        live.note_log(log)
        gc.freeze()
        dirty = no_dirt()
        self._feed_all(live, dirty)
        self.live, self.cycles_since_full, self._full_at = live, 0, self._monotonic()
        return live, dirty, live.cooldowns if log is not None else None

    def _whole_read_due(self) -> bool:
        """FULL_READ_EVERY cycles since the last whole read, and `full_read_after` seconds."""
        if self.cycles_since_full < FULL_READ_EVERY:
            return False
        return self.full_read_after is None or self._monotonic() - self._full_at >= self.full_read_after

    def _feed_all(self, live: LiveFarm, dirty: Dirty) -> None:
        """Mark every entity a policy may match dirty, and every one the engine holds
        (those that vanished must be forgotten): what a fresh engine is sent."""
        engine = self.evaluator
        everything = live.everything({kind: engine.state_filter(kind) for kind in Kind})
        for kind in Kind:
            dirty[kind] |= everything[kind]
            dirty[kind] |= engine.known(kind)
        self._fed_starts, self._swapped = engine.starts, False

    def forget(self) -> None:
        """Drop the farm in memory: the next cycle reads it whole.  After a cycle that
        failed, it may hold rows read but never evaluated, or changes the database
        rolled back."""
        self.live = None

    def _close_evaluator(self) -> None:
        evaluator, self._evaluator = self._evaluator, None
        if evaluator is not None:
            evaluator.close()

    def close(self) -> None:
        """Release the evaluator (an engine child process)."""
        self._close_evaluator()
