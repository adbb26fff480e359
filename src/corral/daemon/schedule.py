"""Which policies are due this cycle: their own schedules, on APScheduler's triggers.

A policy without `schedule` is due every cycle.  One with `schedule: "every 5m"` or a
cron expression (`"0 20 * * *"`: at 20:00, local time of the daemon) is due in the
first cycle at or after its fire time, and only then.  A fire counts as done only
after a cycle that committed and was not paused, so a fire that fell in a failed
cycle, a pause or a standby period is caught up on the next good cycle, provided it
is at most `grace` old (several missed fires coalesce into one).  The last fire acted
on is kept in the store's settings (`schedule:<policy>`), so a restarted daemon or a
standby taking over neither repeats a fire nor misses one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from corral.policy.loader import EVERY_RE, parse_duration
from corral.policy.model import Policy

log = logging.getLogger(__name__)
SETTING_PREFIX = "schedule:"
DEFAULT_GRACE = timedelta(hours=1)


def trigger_for(schedule: str, anchor: datetime) -> Any:
    """An APScheduler trigger for 'every <duration>' (anchored at `anchor`) or a 5-field cron line."""
    every = EVERY_RE.match(schedule.strip())
    if every:
        seconds = parse_duration(every.group(1))
        if not seconds:
            raise ValueError(f"'{schedule}': after 'every' comes a duration such as 30s, 5m or 1h")
        return IntervalTrigger(seconds=seconds, start_date=anchor, timezone=anchor.tzinfo)
    return CronTrigger.from_crontab(schedule.strip())


class ScheduleTracker:
    """Fire times of scheduled policies; `due(now)` and `fired(names, now)` per cycle."""

    def __init__(self, grace: timedelta = DEFAULT_GRACE) -> None:
        self.grace = grace
        self._schedules: dict[str, str] = {}
        self._triggers: dict[str, Any] = {}
        self._next: dict[str, datetime | None] = {}

    def update(self, policies: Iterable[Policy], now: datetime, stored: Mapping[str, datetime | None]) -> None:
        """Take the policies in force (after a load or reload); `stored` holds the last fires acted on."""
        wanted = {p.name: p.schedule for p in policies if p.schedule}
        for name in list(self._schedules):
            if wanted.get(name) != self._schedules[name]:
                del self._schedules[name], self._triggers[name], self._next[name]
        for name, schedule in wanted.items():
            if name in self._schedules:
                continue
            last = stored.get(name)
            trigger = trigger_for(schedule, anchor=last or now)
            self._schedules[name], self._triggers[name] = schedule, trigger
            if last is None:
                # first sight: an interval fires at once, a cron line at its next time
                self._next[name] = now if isinstance(trigger, IntervalTrigger) else trigger.get_next_fire_time(None, now)
            else:
                self._next[name] = trigger.get_next_fire_time(last, last + timedelta(microseconds=1))

    def scheduled(self) -> set[str]:
        return set(self._schedules)

    def next_fire(self, name: str) -> datetime | None:
        return self._next.get(name)

    def due(self, now: datetime) -> set[str]:
        """The scheduled policies whose fire time has come (missed fires coalesce into the latest one)."""
        out: set[str] = set()
        for name, at in list(self._next.items()):
            if at is None or at > now:
                continue
            latest = self._latest(name, at, now)
            if now - latest > self.grace:
                self._next[name] = self._advance(name, now)
                log.warning("policy %s missed its fire time %s by more than %s; next at %s",
                            name, latest.isoformat(), self.grace, self._next[name])
                continue
            out.add(name)
        return out

    def _latest(self, name: str, at: datetime, now: datetime) -> datetime:
        """The last fire time at or before `now`, starting from the pending one `at`."""
        trigger = self._triggers[name]
        for _ in range(100_000):
            nxt: datetime | None = trigger.get_next_fire_time(at, at + timedelta(microseconds=1))
            if nxt is None or nxt > now:
                break
            at = nxt
        return at

    def fired(self, names: Iterable[str], now: datetime) -> dict[str, datetime]:
        """Mark fires acted on by a good cycle at `now`; returns the fire times to store."""
        done: dict[str, datetime] = {}
        for name in names:
            at = self._next.get(name)
            if name not in self._triggers or at is None or at > now:
                continue
            done[name] = at
            self._next[name] = self._advance(name, now)
        return done

    def _advance(self, name: str, now: datetime) -> datetime | None:
        """The first fire time strictly after `now` (missed ones coalesce)."""
        trigger = self._triggers[name]
        nxt: datetime | None = trigger.get_next_fire_time(None, now + timedelta(microseconds=1))
        return nxt
