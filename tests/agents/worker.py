"""A real livekit-agents worker for the integration tests, shaped by environment variables.

    TEST_AGENT_NAME     agent name to register with (empty: automatic dispatch)
    TEST_BEHAVIOUR      shutdown | raise | hang | stay | reject | decline | listen | hear | watch
                        shutdown: record the job, then ctx.shutdown()
                        stay:     join the room and stay until the job is terminated
                        listen:   join the room, measure the first participant's audio (50 frames from
                                  its first sound), answer with a transcription text stream (topic
                                  lk.transcription), then ctx.shutdown()
                        hear:     as listen, then stay in the room until the job is terminated
                        watch:    join the room, count 30 frames of the first video track it receives,
                                  record their size and mean colour (<job id>.watched), then ctx.shutdown()
                        raise:    record the job, then raise from the entrypoint
                        hang:     record the job and return; it runs until the server terminates it
                        reject:   answer every offer with reject(terminate=False), writing
                                  <job id>.refused
                        decline:  answer every offer with reject(terminate=True)
    TEST_RECORD_DIR     where each job started writes <job id>.json with what the agent received
    TEST_ENDED_DIR      where each job writes <job id>.ended when its process shuts down
    TEST_SETUP_SECONDS  how long each job process takes to set up (setup_fnc), default 0
    TEST_IDLE_PROCESSES job processes kept ready, default 1
    TEST_EXECUTOR       process (default) | thread: how jobs are run

Every copy of a job that starts also writes <job id>.<pid>.<n>.run: a JSON line with its start time, and a
second one with its end time when it shuts down, so tests can tell whether two copies ever overlapped.

Run as a user runs an agent: `python worker.py start`, with LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET.
"""

import asyncio
import itertools
import json
import os
import threading
import time
from pathlib import Path

import jwt
import numpy as np
from livekit import rtc
from livekit.agents import AgentServer, JobContext, JobExecutorType, JobProcess, JobRequest, cli

AGENT_NAME = os.environ.get("TEST_AGENT_NAME", "")
BEHAVIOUR = os.environ.get("TEST_BEHAVIOUR", "shutdown")
RECORD_DIR = Path(os.environ["TEST_RECORD_DIR"])
ENDED_DIR = Path(os.environ.get("TEST_ENDED_DIR", os.environ["TEST_RECORD_DIR"]))

SETUP_SECONDS = float(os.environ.get("TEST_SETUP_SECONDS", "0"))
RUNS = itertools.count()  # thread executors run several jobs in one process
RUNS_LOCK = threading.Lock()


def setup(_: JobProcess) -> None:
    time.sleep(SETUP_SECONDS)  # as loading a model would


# Health server on loopback and a free port; a fixed load so that a busy test machine does not make the
# worker report itself full.
server = AgentServer(
    host="127.0.0.1",
    port=0,
    load_fnc=lambda: 0.1,
    num_idle_processes=int(os.environ.get("TEST_IDLE_PROCESSES", "1")),
    job_executor_type=JobExecutorType(os.environ.get("TEST_EXECUTOR", "process")),
    setup_fnc=setup if SETUP_SECONDS else None,
    initialize_process_timeout=SETUP_SECONDS + 10,
)


async def on_request(request: JobRequest) -> None:
    if BEHAVIOUR == "reject":
        (RECORD_DIR / f"{request.job.id}.refused").write_text(request.job.room.name)
        await request.reject(terminate=False)
    elif BEHAVIOUR == "decline":
        await request.reject(terminate=True)
    else:
        await request.accept(name="Test Agent", attributes={"test": "yes"})


@server.rtc_session(agent_name=AGENT_NAME, on_request=on_request)
async def entrypoint(ctx: JobContext) -> None:
    job = ctx.job
    record = {
        "job_id": job.id,
        "dispatch_id": job.dispatch_id,
        "room": job.room.name,
        "room_sid": job.room.sid,
        "agent_name": job.agent_name,
        "metadata": job.metadata,
        "type": job.type,
        "worker_id": ctx.worker_id,
        "pid": os.getpid(),
        "token_claims": jwt.decode(ctx._info.token, options={"verify_signature": False}),
    }
    # Written aside then renamed: tests read these records while jobs start.
    written = RECORD_DIR / f"{job.id}.json.partial"
    written.write_text(json.dumps(record))
    written.replace(RECORD_DIR / f"{job.id}.json")
    with RUNS_LOCK:
        run = RECORD_DIR / f"{job.id}.{os.getpid()}.{next(RUNS)}.run"
    run.write_text(json.dumps({"start": time.time()}) + "\n")

    async def on_shutdown(reason: str) -> None:
        (ENDED_DIR / f"{job.id}.ended").write_text(reason)
        with run.open("a") as lines:
            lines.write(json.dumps({"end": time.time(), "reason": reason}) + "\n")

    ctx.add_shutdown_callback(on_shutdown)
    if BEHAVIOUR == "raise":
        raise RuntimeError("entrypoint failed on purpose")
    if BEHAVIOUR == "shutdown":
        ctx.shutdown("done")
    if BEHAVIOUR in ("listen", "hear"):
        await listen(ctx, job.id)
    if BEHAVIOUR == "watch":
        await watch(ctx, job.id)
    if BEHAVIOUR == "stay":
        await ctx.connect()


async def listen(ctx: JobContext, job_id: str) -> None:
    await ctx.connect()
    subscribed: asyncio.Future[tuple[rtc.RemoteAudioTrack, rtc.RemoteParticipant]] = asyncio.Future()

    def on_track(track: rtc.Track, _: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and not subscribed.done():
            subscribed.set_result((track, participant))  # type: ignore[arg-type]

    ctx.room.on("track_subscribed", on_track)
    for participant in ctx.room.remote_participants.values():
        for publication in participant.track_publications.values():
            if publication.track is not None:
                on_track(publication.track, publication, participant)  # type: ignore[arg-type]
    track, participant = await subscribed
    levels = []
    async for event in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
        samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
        level = float(np.sqrt(np.mean(samples**2)))
        if levels or level > 0:  # the stream plays silence until the first packet arrives (busy machine)
            levels.append(level)
        if len(levels) >= 50:
            break
    rms = sum(levels[-25:]) / 25
    heard = {"participant": participant.identity, "track_sid": track.sid, "rms": rms, "frames": len(levels)}
    (RECORD_DIR / f"{job_id}.heard").write_text(json.dumps(heard))
    await ctx.room.local_participant.send_text(
        f"heard {participant.identity} at rms {rms:.0f}",
        topic="lk.transcription",
        attributes={
            "lk.transcribed_track_id": track.sid,
            "lk.transcription_final": "true",
            "lk.segment_id": f"SG_{job_id}",
        },
    )
    if BEHAVIOUR == "listen":
        ctx.shutdown("listened")


async def watch(ctx: JobContext, job_id: str) -> None:
    """What a vision agent does first: read a participant's video frames."""
    await ctx.connect()
    subscribed: asyncio.Future[tuple[rtc.Track, rtc.RemoteParticipant]] = asyncio.Future()

    def on_track(track: rtc.Track, _: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_VIDEO and not subscribed.done():
            subscribed.set_result((track, participant))

    ctx.room.on("track_subscribed", on_track)
    track, participant = await subscribed
    frames = 0
    async for event in rtc.VideoStream(track, format=rtc.VideoBufferType.RGBA):
        frames += 1
        if frames >= 30:
            frame = event.frame
            pixels = np.frombuffer(frame.data, dtype=np.uint8).reshape(-1, 4)
            colour = [round(float(c)) for c in pixels[:, :3].mean(axis=0)]
            break
    watched = {
        "participant": participant.identity,
        "track_sid": track.sid,
        "frames": frames,
        "size": [frame.width, frame.height],
        "colour": colour,
    }
    (RECORD_DIR / f"{job_id}.watched").write_text(json.dumps(watched))
    ctx.shutdown("watched")


if __name__ == "__main__":
    cli.run_app(server)
