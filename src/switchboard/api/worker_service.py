"""Switchboard's own operator services, beside LiveKit's: `switchboard.WorkerService` (list, drain and
undrain the connected workers) and `switchboard.DispatchService` (why a dispatch's jobs are where they are).

Grants: listing workers needs `roomList` (their jobs name every room), or `roomAdmin` with no room
restriction; draining and undraining need `roomAdmin` with no room restriction (a worker serves every
room); explaining a room's dispatches needs `roomAdmin` on that room, as ListDispatch does, or roomAdmin with
no room restriction.
"""

from typing import Any

from switchboard.api import switchboard_proto as pb
from switchboard.api.twirp import Method
from switchboard.auth.grants import Claims, require_admin_of, require_server_admin, require_server_view
from switchboard.core.errors import InvalidArgument
from switchboard.core.explain import Explanation
from switchboard.core.workers import Worker
from switchboard.runtime import Runtime


def _ns(seconds: float | None) -> int:
    return 0 if seconds is None else int(seconds * 1e9)


def worker_to_proto(runtime: Runtime, worker: Worker, node_id: str) -> Any:
    jobs = [runtime.engine.jobs[job_id] for job_id in sorted(worker.jobs)]
    return pb.Worker(
        id=worker.id,
        agent_name=worker.spec.agent_name,
        job_type=worker.spec.job_type,
        deployment=worker.spec.deployment,
        version=worker.spec.version,
        status=worker.status,
        load=worker.load,
        draining=worker.drained,
        jobs=[
            pb.WorkerJob(id=j.id, dispatch_id=j.dispatch_id, room=j.room, state=j.status.value) for j in jobs
        ],
        node_id=worker.spec.node or node_id,  # on a cluster node, another node's worker too
        registered_at=_ns(worker.registered_at),
        reported_job_count=worker.reported_jobs,
    )


def explanation_to_proto(explanation: Explanation) -> Any:
    return pb.JobExplanation(
        dispatch_id=explanation.dispatch_id,
        agent_name=explanation.agent_name,
        job_id=explanation.job_id,
        state=explanation.status.value if explanation.status else "none",
        summary=explanation.summary,
        workers=[
            pb.WorkerVerdict(worker_id=v.worker_id, load=v.load, reason=v.why) for v in explanation.workers
        ],
        since=_ns(explanation.since),
        until=_ns(explanation.until),
        earlier_attempts=explanation.earlier_attempts,
    )


def _required(value: str, name: str) -> str:
    if not value:
        raise InvalidArgument(f"{name} is required")
    return value


def worker_methods(runtime: Runtime, node_id: str) -> dict[str, Method]:
    engine = runtime.engine

    def list_(claims: Claims, request: Any) -> Any:
        require_server_view(claims)
        names = set(request.agent_names)
        workers = sorted(engine.workers.values(), key=lambda w: (w.spec.agent_name, w.registered_at, w.id))
        return pb.ListWorkersResponse(
            workers=[
                worker_to_proto(runtime, w, node_id)
                for w in workers
                if not names or w.spec.agent_name in names
            ]
        )

    def drain(claims: Claims, request: Any) -> Any:
        require_server_admin(claims)
        worker_id = _required(request.worker_id, "worker_id")
        worker = runtime.call(lambda engine: engine.drain_worker(worker_id, runtime.now()))
        return worker_to_proto(runtime, worker, node_id)

    def undrain(claims: Claims, request: Any) -> Any:
        require_server_admin(claims)
        worker_id = _required(request.worker_id, "worker_id")
        worker = runtime.call(lambda engine: engine.undrain_worker(worker_id, runtime.now()))
        return worker_to_proto(runtime, worker, node_id)

    return {
        "ListWorkers": Method(pb.ListWorkersRequest, list_),
        "DrainWorker": Method(pb.DrainWorkerRequest, drain),
        "UndrainWorker": Method(pb.UndrainWorkerRequest, undrain),
    }


def dispatch_methods(runtime: Runtime) -> dict[str, Method]:
    engine = runtime.engine

    def explain(claims: Claims, request: Any) -> Any:
        require_admin_of(claims, _required(request.room, "room"))
        explanations = engine.explain(request.room, request.dispatch_id, runtime.now())
        return pb.ExplainDispatchResponse(
            room=request.room, jobs=[explanation_to_proto(e) for e in explanations]
        )

    return {"ExplainDispatch": Method(pb.ExplainDispatchRequest, explain)}
