"""The last hour of dispatching, minute by minute, for the dashboard's charts: dispatches created, the
wait from a job's creation to its running, and jobs failed. A ring of per-minute buckets fed by the
engine's decisions, so that the charts cost nothing when no page looks and survive no restart.

Each node keeps its own rooms' minutes; on a cluster the page's node adds up every node's (`combined`)."""

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from switchboard.core.events import DispatchCreated, JobEnded, JobStarted
from switchboard.core.jobs import JobStatus

MINUTES = 60


@dataclass
class Minute:
    start: int
    """Unix time of the minute's first second (wall clock: the page labels the charts with it)."""
    dispatches: int = 0
    started: int = 0
    wait_total: float = 0.0
    """Seconds from creation to running, summed over the jobs that started in this minute."""
    wait_max: float = 0.0
    failures: int = 0


class Activity:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._minutes: deque[Minute] = deque(maxlen=MINUTES)

    def _now(self) -> Minute:
        start = int(self._clock() // 60) * 60
        if not self._minutes or self._minutes[-1].start != start:
            self._minutes.append(Minute(start))
        return self._minutes[-1]

    def dispatched(self, _: DispatchCreated) -> None:
        self._now().dispatches += 1

    def started(self, event: JobStarted) -> None:
        job = event.job
        if job.started_at is None:
            return
        wait = max(0.0, job.started_at - job.created_at)
        minute = self._now()
        minute.started += 1
        minute.wait_total += wait
        minute.wait_max = max(minute.wait_max, wait)

    def ended(self, event: JobEnded) -> None:
        if event.job.status is JobStatus.FAILED and not event.handed_over:
            self._now().failures += 1

    def last_hour(self) -> list[dict[str, Any]]:
        """Every minute of the last hour, oldest first, the quiet ones as zeros."""
        current = int(self._clock() // 60) * 60
        kept = {minute.start: minute for minute in self._minutes}
        answer = []
        for start in range(current - (MINUTES - 1) * 60, current + 60, 60):
            minute = kept.get(start, Minute(start))
            answer.append(
                {
                    "start": start,
                    "dispatches": minute.dispatches,
                    "failures": minute.failures,
                    "started": minute.started,
                    "wait_avg": minute.wait_total / minute.started if minute.started else 0.0,
                    "wait_max": minute.wait_max,
                }
            )
        return answer


def combined(own: list[dict[str, Any]], others: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Other nodes' last hours added to this one's, minute by minute (by the minute's start: a node whose
    clock is a minute off adds its edge minute to nobody's): counts summed, the average wait over every
    job that started, the longest wait kept."""
    answer = {minute["start"]: dict(minute) for minute in own}
    for hour in others:
        for theirs in hour:
            minute = answer.get(theirs["start"])
            if minute is None:
                continue
            waited = minute["wait_avg"] * minute["started"] + theirs["wait_avg"] * theirs["started"]
            for key in ("dispatches", "failures", "started"):
                minute[key] += theirs[key]
            minute["wait_avg"] = waited / minute["started"] if minute["started"] else 0.0
            minute["wait_max"] = max(minute["wait_max"], theirs["wait_max"])
    return list(answer.values())
