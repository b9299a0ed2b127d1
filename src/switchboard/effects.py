"""Who carries out each of the engine's decisions: the one table, wired in the composition root.

Decisions are carried out in the order the engine made them; for one decision, its effects run in the
order below: first the adapter that acts on it (a worker's message, a participant's connection), then the
observers (metrics, then webhooks), so that what is observed has already been done. An effect that raises
is logged and the others still run (`Runtime`). docs/engine-gateway.md says more.
"""

from switchboard.api.dashboard import EVENT_KINDS, Dashboard
from switchboard.cluster.store import DispatchStore
from switchboard.cluster.workers import ClusterWorkers
from switchboard.core.events import (
    AssignJob,
    DisconnectParticipant,
    DispatchCreated,
    DispatchDeleted,
    DispatchReferenced,
    JobChanged,
    JobEnded,
    JobQueued,
    JobStarted,
    OfferJob,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    RoomClosed,
    RoomStarted,
    SendData,
    TerminateJob,
    TrackMuted,
    TrackPublished,
    TrackUnpublished,
    WorkerDrained,
)
from switchboard.metrics import Metrics
from switchboard.rtc.service import RtcService
from switchboard.runtime import Effects
from switchboard.webhooks import Webhooks
from switchboard.workers.hub import WorkerHub


def wire_effects(
    effects: Effects,
    workers: WorkerHub | ClusterWorkers,
    rtc: RtcService,
    dashboard: Dashboard,
    webhooks: Webhooks | None,
    metrics: Metrics | None,
    store: DispatchStore | None = None,
) -> None:
    # Acting: the worker hub (the /agent connections; on a cluster node, through ClusterWorkers, which
    # carries a decision for a worker of another node there) and the rtc service (the /rtc connections).
    effects.on(OfferJob, workers.offer)
    effects.on(AssignJob, workers.assign)
    effects.on(TerminateJob, workers.terminate)
    if isinstance(workers, ClusterWorkers):  # alone, a drain is the engine's flag and nothing more
        effects.on(WorkerDrained, workers.drained)
    effects.on(DisconnectParticipant, rtc.disconnect)
    effects.on(ParticipantUpdated, rtc.participant_updated)
    effects.on(TrackMuted, rtc.track_muted)
    effects.on(SendData, rtc.send_data)
    # Keeping (redis:): each room's dispatches and job states in the store, written in the background;
    # the decisions that exist only for it are carried out by nobody else.
    if store is not None:
        effects.on(RoomStarted, store.keep)
        effects.on(RoomClosed, store.keep)
        effects.on(DispatchCreated, store.keep)
        effects.on(DispatchReferenced, store.keep)
        effects.on(DispatchDeleted, store.keep)
        effects.on(JobQueued, store.keep)
        effects.on(AssignJob, store.keep)
        effects.on(JobStarted, store.keep)
        effects.on(JobChanged, store.keep)
        effects.on(JobEnded, store.keep)
    # Observing: counters and histograms, then webhook events (queued; sent by their own tasks), then the
    # dashboard (its last hour of activity, and the events its open pages are streamed).
    if metrics is not None:
        effects.on(DispatchCreated, metrics.dispatch_created)
        effects.on(OfferJob, metrics.offered)
        effects.on(AssignJob, metrics.assigned)
        effects.on(JobStarted, metrics.started)
        effects.on(JobEnded, metrics.ended)
    if webhooks is not None:
        effects.on(RoomStarted, webhooks.room_started)
        effects.on(RoomClosed, webhooks.room_closed)
        effects.on(ParticipantJoined, webhooks.participant_joined)
        effects.on(ParticipantLeft, webhooks.participant_left)
        effects.on(TrackPublished, webhooks.track_published)
        effects.on(TrackUnpublished, webhooks.track_unpublished)
        effects.on(JobStarted, webhooks.job_started)
        effects.on(JobEnded, webhooks.job_ended)
    effects.on(DispatchCreated, dashboard.minutes.dispatched)
    effects.on(JobStarted, dashboard.minutes.started)
    effects.on(JobEnded, dashboard.minutes.ended)
    for decision_type in EVENT_KINDS:
        effects.on(decision_type, dashboard.publish)
