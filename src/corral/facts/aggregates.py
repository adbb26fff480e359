"""The counts facts are made of, kept by deltas so that a cycle updates them cheaply.

A whole farm is counted once (`Aggregates.from_farm`); the daemon's live farm then
feeds only what changed (`frame_mover`, `run`).  The invariant the incremental path
rests on: the counts always count each frame's *current* fields and every run recorded
(tests/test_live.py holds a live farm's counts to a fresh count after any changes).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from heapq import heapify, heappop, heappush
from operator import attrgetter

from corral.facts.vocabulary import DEFAULT_RECENT
from corral.farm import Farm, Frame, FrameRun
from corral.states import VALUE, FrameState


def frame_runs(frame: Frame) -> list[FrameRun]:
    """A frame's finished attempts; a snapshot that omits history gets its last one."""
    if frame.runs:
        return frame.runs
    if frame.state in (FrameState.COMPLETE, FrameState.FAILED) and frame.host:
        return [
            FrameRun(frame.host, frame.instance, frame.state, frame.exit_code, frame.started_at, frame.finished_at)
        ]
    return []


class _Tail:
    """Finished runs since the last success, in finished order (for "in a row" counts).

    Only the tail after the latest success matters for consecutive failures and for
    the distinct jobs failed since a success, so older runs are dropped: the memory
    this keeps is bounded by the failures in a row, not by history.
    """

    __slots__ = ("horizon", "runs")

    def __init__(self) -> None:
        self.horizon: tuple[datetime, int] | None = None  # (finished_at, seq) of the latest success
        self.runs: list[tuple[datetime, int, int]] = []  # (finished_at, seq, job_id) of failures after it

    def add(self, when: datetime, seq: int, ok: bool, job_id: int) -> None:
        key = (when, seq)
        if self.horizon is not None and key < self.horizon:
            return  # happened before the latest success: no longer "in a row"
        if ok:
            # The failures up to it are no longer "in a row": the head of the sorted list,
            # cut off where (finished_at, seq) passes the key (seqs are ints).
            self.horizon = key
            if self.runs:
                del self.runs[:bisect_left(self.runs, (when, seq + 1))]
        else:
            insort(self.runs, (when, seq, job_id))

    @classmethod
    def of(cls, runs: list[tuple[datetime, int, bool, int]]) -> _Tail:
        """The tail of runs sorted by (finished_at, seq)."""
        tail = cls()
        last_ok = max((i for i, r in enumerate(runs) if r[2]), default=-1)
        if last_ok >= 0:
            tail.horizon = (runs[last_ok][0], runs[last_ok][1])
        tail.runs = [(w, s, j) for w, s, ok, j in runs[last_ok + 1:] if not ok]
        return tail

    @property
    def failures(self) -> int:
        return len(self.runs)

    def distinct_jobs(self) -> int:
        return len({r[2] for r in self.runs})

    def jobs(self) -> set[int]:
        """The distinct jobs of the failures in a row."""
        return {r[2] for r in self.runs}

    def failing_for(self) -> float | None:
        """Seconds from the latest success to the latest failure after it (0: none after
        it; None: no success known).  Not the time since the success: a host that failed
        a few frames and then waited an hour for work has not been failing for an hour."""
        if self.horizon is None:
            return None
        return max(0.0, (self.runs[-1][0] - self.horizon[0]).total_seconds()) if self.runs else 0.0

    def fails_other_than(self, job_id: int) -> bool:
        """Whether a failure in a row is of another job than `job_id` (a host failing
        everything it takes now, whatever it completed before)."""
        return any(r[2] != job_id for r in self.runs)

    def shape(self) -> object:
        """What `fails_other_than` answers for every job at once: None (no failure in a
        row), the one job they are all of, or SEVERAL."""
        runs = self.runs
        if not runs:
            return None
        first = runs[0][2]
        return SEVERAL if any(r[2] != first for r in runs) else first


#: `_Tail.shape` of failures in a row of more than one job.
SEVERAL = object()


_STATE = attrgetter("state")


class Aggregates:
    """The counts facts are made of, kept by deltas so a cycle can update them cheaply.

    A full build feeds every frame and run once (`from_farm`); the daemon's live farm
    then feeds only what changed: `frame_state(old, +/-)` for a frame whose state moved,
    `run(...)` for each newly recorded run.  Runs are append-only history.
    """

    def __init__(self, recent: timedelta = DEFAULT_RECENT, *, keep_recent: bool = True) -> None:
        """`keep_recent`: keep each host's runs for the recent window's counts (a daemon
        whose policies read no `recent_*` field saves the work on every run it reads)."""
        self.recent, self.keep_recent = recent, keep_recent
        self._kept = 2 * recent  # how far back of a host's newest run `host_recent` keeps
        self.seq = 0
        self.job_frames: dict[int, Counter[str]] = defaultdict(Counter)
        #: Failed attempts of a job's frames on a host, and the distinct frames among them
        #: (one frame failing three times on a host is 3 attempts but 1 frame).
        self.job_host_fail: Counter[tuple[int, str]] = Counter()
        self.job_host_fail_frames: Counter[tuple[int, str]] = Counter()
        self._failed_on: set[tuple[int, int, str]] = set()  # (job, frame number, host) failed at least once
        #: When a host last failed a frame of a job (Afanasy forgives a host after a while).
        self.job_host_last_fail: dict[tuple[int, str], datetime] = {}
        #: A host's failures on a job, in time order, for the recent window's count; like
        #: `host_recent`, only the last two windows before the pair's newest are kept.
        self.job_host_recent_fail: dict[tuple[int, str], list[datetime]] = defaultdict(list)
        #: Every run of `host_recent` and failure of `job_host_recent_fail` by the time it
        #: was counted from, soonest first: `aged` pops the ones that left the window
        #: since the last plan instead of scanning every host and every (job, host) pair
        #: (tens of thousands of pairs on a million-frame farm: 4 ms a cycle).
        self._host_expiry: list[tuple[datetime, str]] = []
        self._pair_expiry: list[tuple[datetime, int, str]] = []
        #: Every failed attempt of a job's frames over its life (Deadline fails a job after 100).
        self.job_failed_attempts: Counter[int] = Counter()
        #: A job's failed attempts by exit code, which `corral.failures` sorts into classes.
        self.job_fail_codes: dict[int, Counter[int | None]] = defaultdict(Counter)
        self.job_host_ok: Counter[tuple[int, str]] = Counter()
        #: Hosts that completed at least one frame of each job: a job others complete and a
        #: host fails speaks against the host; a job nobody completes, against the job.
        self.job_ok_hosts: Counter[int] = Counter()
        #: Jobs whose first or second host to complete a frame of them the last `run` calls
        #: recorded: the hosts that failed them are judged again
        #: (`distinct_jobs_failed_others_complete`; `LiveFarm.apply` takes and clears it).
        self.newly_completed_elsewhere: set[int] = set()
        #: Completed attempts per host over every job: a host that completes frames
        #: elsewhere is healthy, and its failures on a job speak against the job.
        self.host_ok: Counter[str] = Counter()
        #: Hosts whose standing elsewhere the last `run` calls moved: their first completed
        #: attempt anywhere, or their failures in a row coming to span another job than
        #: one they fail, or no longer (`failing_hosts_healthy_elsewhere`); every job they
        #: failed is judged again (`LiveFarm.apply` takes and clears it).
        self.newly_healthy: set[str] = set()
        #: The distinct jobs each host failed a frame of, over its life: a host that failed
        #: one job and no other speaks against that job (a bad host fails every job it
        #: takes); and a host's standing elsewhere moving (`newly_healthy`,
        #: `newly_failing_elsewhere`) moves only the facts of these jobs, found here rather
        #: than by a scan of every job's hosts (1 ms a cycle at 100k frames).
        self.host_failed_jobs: dict[str, set[int]] = defaultdict(set)
        #: Hosts the last `run` calls saw fail a second job: the job they failed first no
        #: longer has them failing it alone, and is judged again (`LiveFarm.apply`).
        self.newly_failing_elsewhere: set[str] = set()
        self.job_host_refs: dict[int, Counter[str]] = defaultdict(Counter)  # runs + running frames per host
        self.running_on_host: Counter[str] = Counter()
        self.host_tail: dict[str, _Tail] = defaultdict(_Tail)
        #: Per host, its finished runs (finished_at, seq, ok) in order, for the recent
        #: window's counts; only the last two windows before its newest run are kept (a
        #: cycle asks for the window ending at its `now`, after the runs it has read), or
        #: a daemon would hold every run of its life here, needed or not.
        self.host_recent: dict[str, list[tuple[datetime, int, bool]]] = defaultdict(list)
        self.inst_tail: dict[str, _Tail] = defaultdict(_Tail)
        self.inst_failed: Counter[str] = Counter()
        self.inst_ok: Counter[str] = Counter()

    @classmethod
    def from_farm(cls, farm: Farm, recent: timedelta = DEFAULT_RECENT, *, keep_recent: bool = True) -> Aggregates:
        """The same counts `frame_state` and `run` would give, for a whole farm at once:
        runs are grouped per host and instance and sorted once, instead of inserted one
        by one (a million frames' history is read this way when the daemon starts)."""
        agg = cls(recent, keep_recent=keep_recent)
        per_host: dict[str, list[tuple[datetime, int, bool, int]]] = defaultdict(list)
        per_inst: dict[str, list[tuple[datetime, int, bool, int]]] = defaultdict(list)
        complete, failed, running = FrameState.COMPLETE, FrameState.FAILED, FrameState.RUNNING
        finished = (complete, failed)
        running_on_host, job_host_ok, job_host_fail = agg.running_on_host, agg.job_host_ok, agg.job_host_fail
        failed_on, last_fail, job_failed_attempts = agg._failed_on, agg.job_host_last_fail, agg.job_failed_attempts
        fail_codes, host_ok, recent_fail = agg.job_fail_codes, agg.host_ok, agg.job_host_recent_fail
        inst_ok, inst_failed, value = agg.inst_ok, agg.inst_failed, VALUE.__getitem__
        seq = agg.seq
        for job in farm.jobs.values():
            job_id = job.id
            refs = agg.job_host_refs[job_id]
            frames = job.frames.values()
            # counted in C (`Counter` of the states' values); the loop below does the rest
            # of `frame_state(frame, +1)` and `run(...)`, inlined: it runs once per frame
            agg.job_frames[job_id] = Counter(map(value, map(_STATE, frames)))
            for frame in frames:
                state = frame.state
                if state == running and frame.host:
                    running_on_host[frame.host] += 1
                    refs[frame.host] += 1
                history = frame.runs or (frame_runs(frame) if state in finished else ())
                for run in history:
                    seq += 1
                    host, instance, ok = run.host, run.instance, run.state == complete
                    if not (ok or run.state == failed):
                        if host:
                            refs[host] += 1
                        continue
                    entry = (run.finished_at or _EPOCH, seq if run.id is None else run.id, ok, job_id)
                    if not ok:
                        job_failed_attempts[job_id] += 1
                        fail_codes[job_id][run.exit_code] += 1
                    if host:
                        refs[host] += 1
                        (job_host_ok if ok else job_host_fail)[(job_id, host)] += 1
                        if ok:
                            host_ok[host] += 1
                        per_host[host].append(entry)
                        if not ok:
                            failed_on.add((job_id, frame.number, host))
                            recent_fail[(job_id, host)].append(entry[0])
                            if entry[0] > last_fail.get((job_id, host), _EPOCH):
                                last_fail[(job_id, host)] = entry[0]
                    if instance:
                        (inst_ok if ok else inst_failed)[instance] += 1
                        per_inst[instance].append(entry)
        agg.seq = seq
        agg.job_host_fail_frames.update((job_id, host) for job_id, _number, host in failed_on)
        for job_id, host in job_host_fail:
            agg.host_failed_jobs[host].add(job_id)
        agg.job_ok_hosts.update(job_id for job_id, _host in job_host_ok)  # one per (job, host) completing
        for times in recent_fail.values():
            times.sort()
            if times[0] < times[-1] - agg._kept:
                del times[:bisect_left(times, times[-1] - agg._kept)]
        for host, runs in per_host.items():
            runs.sort()
            if keep_recent:
                keep = runs[-1][0] - agg._kept
                agg.host_recent[host] = [(w, s, ok) for w, s, ok, _ in runs if w >= keep]
            agg.host_tail[host] = _Tail.of(runs)
        for inst, runs in per_inst.items():
            runs.sort()
            agg.inst_tail[inst] = _Tail.of(runs)
        agg._host_expiry = [(w, h) for h, kept in agg.host_recent.items() for w, _s, _ok in kept]
        agg._pair_expiry = [(w, j, h) for (j, h), times in recent_fail.items() for w in times]
        heapify(agg._host_expiry)
        heapify(agg._pair_expiry)
        return agg

    def frame_state(self, frame: Frame, sign: int) -> None:
        """Count (+1) or uncount (-1) a frame's current state."""
        self.job_frames[frame.job_id][VALUE[frame.state]] += sign
        if frame.state == FrameState.RUNNING and frame.host:
            self.running_on_host[frame.host] += sign
            self.job_host_refs[frame.job_id][frame.host] += sign

    def frame_mover(self) -> Callable[[int, FrameState | None, str | None, FrameState, str | None], None]:
        """`frame_state(-1)` on a frame as it was and `frame_state(+1)` as it is, for a
        change read: called as `moved(job id, state before or None for a new frame, host
        before, state, host)`.  A closure over the counts, not a method: the live farm
        calls it once per changed frame row (ten thousand a cycle on a million-frame
        farm), and a batch of tuples or a method lookup per row cost 7-10 ms a cycle
        there (in-process A/B, 1M frames)."""
        job_frames, running_on_host, job_host_refs = self.job_frames, self.running_on_host, self.job_host_refs
        running, value = FrameState.RUNNING, VALUE  # counts keyed by plain strings (see VALUE)

        def moved(job_id: int, was: FrameState | None, old_host: str | None, state: FrameState, host: str | None) -> None:
            counts = job_frames[job_id]
            if was is not None:
                counts[value[was]] -= 1
                if old_host and was == running:
                    running_on_host[old_host] -= 1
                    job_host_refs[job_id][old_host] -= 1
            counts[value[state]] += 1
            if host and state == running:
                running_on_host[host] += 1
                job_host_refs[job_id][host] += 1

        return moved

    def run(self, job_id: int, number: int, run: FrameRun) -> bool:
        """Record one finished attempt (append-only).  True when it is its host's first
        success or first failure on the job: the host's standing there, which the job's
        other instances show (`other_hosts_*`), moved.  (Told here, where the count is in
        hand: asked of the counts before and after, it cost four more lookups a run in
        tables of a million-frame farm's every host and job.)"""
        self.seq += 1
        seq = run.id if run.id is not None else self.seq
        state, host, instance = run.state, run.host, run.instance
        ok = state == FrameState.COMPLETE
        failed = state == FrameState.FAILED
        when = _ts(run.finished_at)
        first = False
        # A host that completed frames and failed some job: whether its failures in a row
        # span other jobs may move with this run (see `newly_healthy`).
        watched, before = False, None
        if host and (ok or failed) and self.host_ok.get(host, 0) > 0 and host in self.host_failed_jobs:
            watched, before = True, self.host_tail[host].shape()
        if failed:
            self.job_failed_attempts[job_id] += 1
            self.job_fail_codes[job_id][run.exit_code] += 1
        if host:
            self.job_host_refs[job_id][host] += 1
            if failed:
                pair = (job_id, host)
                if (job_id, number, host) not in self._failed_on:
                    self._failed_on.add((job_id, number, host))
                    self.job_host_fail_frames[pair] += 1
                if when > self.job_host_last_fail.get(pair, _EPOCH):
                    self.job_host_last_fail[pair] = when
                times = self.job_host_recent_fail[pair]
                insort(times, when)
                heappush(self._pair_expiry, (when, job_id, host))
                if times[0] < times[-1] - self._kept:
                    del times[:bisect_left(times, times[-1] - self._kept)]
            elif ok:
                self.host_ok[host] += 1
                if self.host_ok[host] == 1:
                    self.newly_healthy.add(host)
            if ok or failed:
                counts, pair = (self.job_host_ok if ok else self.job_host_fail), (job_id, host)
                n = counts[pair] + 1
                counts[pair] = n
                first = n == 1
                if first and failed:
                    jobs = self.host_failed_jobs[host]
                    jobs.add(job_id)
                    if len(jobs) == 2:
                        self.newly_failing_elsewhere.add(host)
                elif first:  # its first completed frame of the job
                    completing = self.job_ok_hosts[job_id] + 1
                    self.job_ok_hosts[job_id] = completing
                    if completing <= 2:  # "others complete it" moved for the hosts failing it
                        self.newly_completed_elsewhere.add(job_id)
            if ok or failed:
                tail = self.host_tail[host]
                tail.add(when, seq, ok, job_id)
                if watched and tail.shape() != before:
                    self.newly_healthy.add(host)
                if self.keep_recent:
                    recent = self.host_recent[host]
                    insort(recent, (when, seq, ok))
                    heappush(self._host_expiry, (when, host))
                    keep = recent[-1][0] - self._kept
                    if recent[0][0] < keep:
                        del recent[:bisect_left(recent, (keep,))]
        if instance and (ok or failed):
            self.inst_tail[instance].add(when, seq, ok, job_id)
            if ok:
                self.inst_ok[instance] += 1
            else:
                self.inst_failed[instance] += 1
        return first

    def jobs_failed_others_complete(self, host: str) -> int:
        """The distinct jobs of the host's failures in a row (since its last completed
        frame) that some other host completed a frame of."""
        tail = self.host_tail.get(host)
        if not tail or not tail.runs:
            return 0
        completing, own = self.job_ok_hosts.get, self.job_host_ok.get
        return sum(1 for job_id in tail.jobs() if completing(job_id, 0) > (1 if own((job_id, host), 0) else 0))

    def job_hosts(self, job_id: int) -> list[str]:
        refs = self.job_host_refs.get(job_id)
        return [h for h, n in refs.items() if n > 0] if refs else []

    def recent_failures_on_job(self, job_id: int, host: str, now: datetime) -> int:
        """A host's failures on a job within the recent window before `now`."""
        times = self.job_host_recent_fail.get((job_id, host))
        if not times:
            return 0
        return len(times) - bisect_left(times, now - self.recent)

    def aged(self, since: datetime, now: datetime) -> tuple[set[str], set[tuple[int, str]]]:
        """The hosts, and the (job, host) pairs, with a run that left the recent window
        between `since` and `now`: their window counts fell with nothing read (the live
        farm marks their facts changed, or the engine would go on holding old counts)."""
        lo, hi = since - self.recent, now - self.recent
        if hi <= lo:
            return set(), set()
        # A run is counted while `when >= now - recent`: those with lo <= when < hi left.
        # Those before `lo` had left at the last plan (or came in since, and were read).
        hosts: set[str] = set()
        pairs: set[tuple[int, str]] = set()
        expiry = self._host_expiry
        while expiry and expiry[0][0] < hi:
            when, host = heappop(expiry)
            if when >= lo:
                hosts.add(host)
        failures = self._pair_expiry
        while failures and failures[0][0] < hi:
            when, job_id, host = heappop(failures)
            if when >= lo:
                pairs.add((job_id, host))
        return hosts, pairs

    def recent_counts(self, host: str, now: datetime) -> tuple[int, int]:
        """(failures, successes) of `host` within the recent window before `now`."""
        if not self.keep_recent:
            raise RuntimeError("these counts were kept without the recent window (keep_recent=False)")
        runs = self.host_recent.get(host)
        if not runs:
            return 0, 0
        cutoff = now - self.recent
        first = bisect_left(runs, (cutoff, -1, False))
        if first and runs[0][0] < now - self._kept:
            del runs[:first]  # older than any window still asked for
            first = 0
        ok = sum(1 for r in runs[first:] if r[2])
        return len(runs) - first - ok, ok



def _ts(value: datetime | None) -> datetime:
    return value if value is not None else _EPOCH


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
