"""Which worker gets a job: the least-loaded one that can take it."""

from collections.abc import Iterable

from switchboard.core.jobs import Job
from switchboard.core.workers import Worker


def choose_worker(job: Job, candidates: Iterable[Worker], load_threshold: float) -> Worker | None:
    """The accepting worker with the lowest effective load under the threshold, not yet tried for this job.

    Ties go to the worker holding fewer jobs, then to the one registered first, so that a burst of jobs
    spreads over idle workers instead of piling onto one.
    """
    best: Worker | None = None
    best_rank: tuple[float, int, float] = (0.0, 0, 0.0)
    for worker in candidates:
        if not worker.accepting or worker.id in job.tried_workers:
            continue
        load = worker.effective_load()
        if load >= load_threshold:
            continue
        rank = (load, len(worker.jobs), worker.registered_at)
        if best is None or rank < best_rank:
            best, best_rank = worker, rank
    return best
