"""Which worker gets a job: the least-loaded one that can take it."""

import random
from collections.abc import Sequence

from switchboard.core.jobs import Job
from switchboard.core.workers import Worker

# Above this many workers for one agent, the least loaded of a random sample is chosen ("power of d
# choices"): nearly as balanced as a full scan, at a cost that does not grow with the number of workers.
SAMPLE_SIZE = 16


def choose_worker(
    job: Job, candidates: Sequence[Worker], load_threshold: float, rng: random.Random | None = None
) -> Worker | None:
    """The accepting worker with the lowest effective load, among those whose reported load is under the
    threshold, that were not tried for this job since their last report, and that are not stopping an
    earlier copy of it.

    A worker connected to this node comes first (on a cluster, a worker of another node only when none of
    this node's can take the job: no hop, no cross-node messages, and the room's own node estimates its
    own workers' loads best, since it assigned their jobs). Among them, only what a worker reported keeps
    it from being asked: the load estimated for jobs assigned since its last report ranks workers (so a
    burst spreads over idle ones) but never holds a job back, since the worker's own answer says whether
    it can take one more. Ties go to the worker holding fewer jobs, then to the one registered first.
    """
    if len(candidates) > SAMPLE_SIZE:
        sample = (rng or random).sample(candidates, SAMPLE_SIZE)
        chosen = _least_loaded(job, sample, load_threshold)
        if chosen is not None:
            return chosen
    return _least_loaded(job, candidates, load_threshold)


def _least_loaded(job: Job, candidates: Sequence[Worker], load_threshold: float) -> Worker | None:
    best: Worker | None = None
    best_rank: tuple[bool, float, int, float] = (False, 0.0, 0, 0.0)
    for worker in candidates:
        if not worker.accepting or worker.id in job.tried_workers or worker.id in job.excluded_workers:
            continue
        if worker.id in job.stopping:
            continue
        if worker.load >= load_threshold:
            continue
        rank = (bool(worker.spec.node), worker.effective_load(), len(worker.jobs), worker.registered_at)
        if best is None or rank < best_rank:
            best, best_rank = worker, rank
    return best
