"""Benchmark the built-in voice agent: voice-to-voice latency with the offline pipeline (pocketsphinx STT,
espeak-ng TTS, livekit-agents AgentSession), and the agent's CPU per conversation.

The server runs `agents/agent-voice-echo.yaml` as it ships (`agents_dir`) and the script dispatches it into
a fresh room with CreateDispatch. A participant (the Python rtc SDK) waits for the agent's greeting, then
speaks N sentences synthesised by espeak-ng (the tests' own speech), each followed by silence, and hears
the agent say each back ("You said: …"). Everything is timed where the participant sees it:

  speech end     the last spoken sample of the utterance, as published (the SDK plays its queue out in
                 real time from the first frame, so a sample's time is the utterance's start plus its offset)
  STT final      the agent's final user transcription arrives (an `lk.transcription` text stream sent on
                 the participant's behalf, `lk.transcription_final: true`)
  thinking       the agent's `lk.agent.state` attribute becomes `thinking` (livekit-agents: the user's turn
                 is over, the reply is being prepared)
  speaking       `lk.agent.state` becomes `speaking` (the first synthesised audio reached the agent's output)
  first audio    the first sample of the reply louder than a threshold, decoded from the agent's track

  voice-to-voice = first audio - speech end (target: p50 <= 800 ms, what LiveKit and Pipecat quote with
  cloud models), split as STT end of speech (STT final - speech end; floor: the configured end_silence of
  silence that ends an utterance), turn and TTS first chunk (speaking - STT final) and transport (first
  audio - speaking). The attribute and the text stream each reach the participant through the server too,
  so each split point carries one signalling hop (a few ms on loopback).

  cpu            CPU of the agent's processes (its worker and job processes) during one conversation, then
                 with --conversations rooms talking at once (one agent job per room), and idle.

The server is not pinned: the agent's processes need the CPU as much as the server does.

    .venv/bin/python bench/voice.py [--utterances 20] [--conversations 2] [--json]
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from livekit import api, rtc

from captions import agents_cpu_seconds, speech_span
from common import (
    NOISY_OTHER_CPU,
    Server,
    agents_server,
    descendants,
    machine,
    machine_busy_seconds,
    percentile,
    process_cpu_seconds,
)

# The speech helpers are the tests' own, so that the benchmark speaks exactly as the tests do.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.speech import SENTENCES, Speaker, speak

from switchboard.agents.config import load_agent_config
from switchboard.agents.services.pocketsphinx_stt import PocketSphinxSTT
from switchboard.agents.services.speech_to_text import build_stt
from switchboard.agents.services.voice_echo import STT_DEFAULTS
from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token

AGENT = "voice-echo"
SAMPLE = Path(__file__).resolve().parents[1] / "agents" / f"agent-{AGENT}.yaml"
TARGET_P50_S = 0.8
STATE = "lk.agent.state"
LOUD_SAMPLE = 500  # |sample| of the received 16-bit audio above which the agent is speaking
PAUSE = 1.5  # silence published after each sentence (more than the end_silence that ends an utterance)
QUIET = 1.0  # seconds with no loud sample after which what the agent says is over
READY_DEADLINE = 120.0  # agent started, registered, job process joined, greeting heard
REPLY_DEADLINE = 15.0  # after an utterance, how long its reply (and its end) may take
REPLENISH_SETTLE = 5.0  # the agent starts a new idle job process when a job takes one: not conversation
IDLE_SETTLE = 3.0
IDLE_WINDOW = 5.0
IDLE_PROCESSES = 5  # `switchboard agent run`, multiprocessing's two helpers, two idle job processes


@dataclass
class Heard:
    """What one participant saw of the agent: loud audio, state changes (each with time.monotonic())."""

    loud_at: list[float] = field(default_factory=list)
    states: list[tuple[float, str]] = field(default_factory=list)

    def first_loud(self, after: float) -> float | None:
        return next((t for t in self.loud_at if t > after), None)

    def state(self, name: str, after: float) -> float | None:
        return next((t for t, s in self.states if s == name and t > after), None)

    def quiet_since(self, after: float) -> bool:
        """The agent said something after `after` and has been silent for QUIET seconds."""
        loud = [t for t in self.loud_at if t > after]
        return bool(loud) and time.monotonic() - loud[-1] > QUIET


class Conversation:
    """One room with the voice agent dispatched to it, and one participant talking with it."""

    def __init__(self, server: Server, identity: str) -> None:
        self.server = server
        self.room_name = f"voice-{uuid.uuid4().hex[:8]}"
        self.speaker = Speaker(identity)
        self.heard = Heard()
        self._tasks: set[asyncio.Task[None]] = set()
        room = self.speaker.room

        @room.on("track_subscribed")
        def on_track(track: rtc.Track, _: Any, participant: rtc.RemoteParticipant) -> None:
            if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
                task = asyncio.create_task(self._listen(track))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        @room.on("participant_attributes_changed")
        def on_attributes(changed: dict[str, str], participant: rtc.Participant) -> None:
            if STATE in changed:
                self.heard.states.append((time.monotonic(), changed[STATE]))

    async def _listen(self, track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
            samples = np.frombuffer(event.frame.data, dtype=np.int16)
            if samples.size and int(np.max(np.abs(samples.astype(np.int32)))) > LOUD_SAMPLE:
                self.heard.loud_at.append(time.monotonic())

    async def start(self, lkapi: api.LiveKitAPI) -> None:
        request = api.CreateAgentDispatchRequest(room=self.room_name, agent_name=AGENT)
        await lkapi.agent_dispatch.create_dispatch(request)
        video = VideoGrant(room_join=True, room=self.room_name)
        token = mint_token(
            self.server.api_key, self.server.api_secret, video=video, identity=self.speaker.identity
        )
        await self.speaker.join(self.server.url.replace("http://", "ws://", 1), token)

    async def wait_quiet(self, after: float, deadline: float) -> bool:
        end = time.monotonic() + deadline
        # Polled: audio arrives on the SDK's own tasks; this wait is not part of any figure.
        while time.monotonic() < end:
            if self.heard.quiet_since(after):
                return True
            await asyncio.sleep(0.05)
        return False

    async def greeted(self) -> None:
        if not await self.wait_quiet(0.0, READY_DEADLINE):
            raise RuntimeError(f"no greeting within {READY_DEADLINE:.0f}s: is espeak-ng installed?")

    async def utterance(self, sentence: str) -> dict[str, Any]:
        """Say `sentence`, wait for the reply to be over, and time it."""
        _, last_word = speech_span(speak(sentence))
        began = await self.speaker.say(sentence, PAUSE)
        speech_end = began + last_word
        await self.wait_quiet(speech_end, REPLY_DEADLINE)
        own = [
            c for c in self.speaker.captions if c.sender == self.speaker.identity and c.received_at > began
        ]
        final = next((c for c in own if c.final), None)
        heard = self.heard

        def since_end(at: float | None) -> float | None:
            return None if at is None else at - speech_end

        return {
            "sentence": sentence,
            "understood": final.text if final else None,
            "stt_final_s": since_end(final.received_at if final else None),
            "thinking_s": since_end(heard.state("thinking", began)),
            "speaking_s": since_end(heard.state("speaking", began)),
            "first_audio_s": since_end(heard.first_loud(speech_end)),
            "states": [s for t, s in heard.states if t > began],
        }

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.speaker.leave()


def spread(rows: Sequence[dict[str, Any]], key: str) -> dict[str, float | int | None]:
    values = sorted(r[key] for r in rows if r[key] is not None)
    return {
        "n": len(values),
        "p50": percentile(values, 0.5) if values else None,
        "p95": percentile(values, 0.95) if values else None,
    }


def splits(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-utterance differences between consecutive points, then their percentiles."""
    derived = []
    for r in rows:

        def between(a: str, b: str, r: dict[str, Any] = r) -> float | None:
            return None if r[a] is None or r[b] is None else r[b] - r[a]

        derived.append(
            {
                "voice_to_voice": r["first_audio_s"],
                "stt_end_of_speech": r["stt_final_s"],
                "final_to_thinking": between("stt_final_s", "thinking_s"),
                "thinking_to_speaking": between("thinking_s", "speaking_s"),
                "final_to_speaking": between("stt_final_s", "speaking_s"),
                "transport": between("speaking_s", "first_audio_s"),
            }
        )
    return {key: spread(derived, key) for key in derived[0]} if derived else {}


class Bench:
    def __init__(self, server: Server, lkapi: api.LiveKitAPI) -> None:
        self.server = server
        self.lkapi = lkapi
        assert server.pid is not None
        self.pid = server.pid

    async def idle_cpu(self) -> float:
        deadline = time.monotonic() + READY_DEADLINE
        while len(descendants(self.pid)) < IDLE_PROCESSES and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        await asyncio.sleep(IDLE_SETTLE)
        before, started = agents_cpu_seconds(self.pid), time.monotonic()
        await asyncio.sleep(IDLE_WINDOW)
        return (agents_cpu_seconds(self.pid) - before) / (time.monotonic() - started)

    async def conversations(self, count: int, utterances: int) -> dict[str, Any]:
        """`count` rooms at once, each with its agent job and one participant saying `utterances`
        sentences; the agent's CPU over the talking part."""
        talks = [Conversation(self.server, f"speaker-{i}") for i in range(count)]
        try:
            await asyncio.gather(*(c.start(self.lkapi) for c in talks))
            await asyncio.gather(*(c.greeted() for c in talks))
            await asyncio.sleep(REPLENISH_SETTLE)
            agent_before, server_before = agents_cpu_seconds(self.pid), process_cpu_seconds(self.pid)
            machine_before, client_before = machine_busy_seconds(), time.process_time()
            started = time.monotonic()

            async def talk(index: int, conversation: Conversation) -> list[dict[str, Any]]:
                sentences = itertools.islice(itertools.cycle(SENTENCES), index, index + utterances)
                return [await conversation.utterance(sentence) for sentence in sentences]

            per_room = await asyncio.gather(*(talk(i, c) for i, c in enumerate(talks)))
            elapsed = time.monotonic() - started
            agent_cpu = (agents_cpu_seconds(self.pid) - agent_before) / elapsed
            server_cpu = (process_cpu_seconds(self.pid) - server_before) / elapsed
            client_cpu = (time.process_time() - client_before) / elapsed
            machine_after = machine_busy_seconds()
            other_cpu = None
            if machine_before is not None and machine_after is not None:
                busy = (machine_after - machine_before) / elapsed
                other_cpu = max(0.0, busy - agent_cpu - server_cpu - client_cpu)
        finally:
            for conversation in talks:
                with contextlib.suppress(Exception):
                    await conversation.close()
        rows = [row for room in per_room for row in room]
        return {
            "conversations": count,
            "utterances": len(rows),
            "answered": sum(1 for r in rows if r["first_audio_s"] is not None),
            "seconds": elapsed,
            "agent_cpu": agent_cpu,
            "agent_cpu_per_conversation": agent_cpu / count,
            "server_cpu": server_cpu,
            "client_cpu": client_cpu,
            "other_cpu": other_cpu,
            "splits": splits(rows),
            "rows": rows,
        }


async def run(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    async with api.LiveKitAPI(server.url, server.api_key, server.api_secret) as lkapi:
        bench = Bench(server, lkapi)
        results: dict[str, Any] = {"agent_idle_cpu": await bench.idle_cpu()}
        results["one"] = await bench.conversations(1, args.utterances)
        if args.conversations > 1:
            results["many"] = await bench.conversations(args.conversations, args.cpu_utterances)
    return results


def ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def end_silence() -> float:
    """The sample's pocketsphinx end_silence, as its STT is built: the STT cannot end an utterance sooner."""
    config = load_agent_config(SAMPLE)
    engine = build_stt(config, config.services["voice_echo"], STT_DEFAULTS)
    assert isinstance(engine, PocketSphinxSTT), "the sample's provider is pocketsphinx"
    return engine.options.end_silence


def print_splits(result: dict[str, Any]) -> None:
    labels = {
        "voice_to_voice": "speech end → first audio of the reply",
        "stt_end_of_speech": "  speech end → STT final (at participant)",
        "final_to_thinking": "  STT final → agent thinking",
        "thinking_to_speaking": "  thinking → agent speaking (TTS first chunk)",
        "final_to_speaking": "  STT final → agent speaking",
        "transport": "  agent speaking → first audio (transport)",
    }
    for key, label in labels.items():
        s = result["splits"].get(key)
        if s and s["n"]:
            print(f"  {label:46} p50 {ms(s['p50']):>8}   p95 {ms(s['p95']):>8}   (n={s['n']})")


def print_report(info: dict[str, Any], results: dict[str, Any]) -> None:
    print(f"machine: {info}")
    one = results["one"]
    print(
        f"\nvoice to voice, one conversation: {one['utterances']} utterances, {one['answered']} answered"
        f" ({one['seconds']:.0f} s)"
    )
    print_splits(one)
    p50 = one["splits"].get("voice_to_voice", {}).get("p50")
    verdict = "-" if p50 is None else ("met" if p50 <= TARGET_P50_S else "MISSED")
    print(f"  target: p50 ≤ {ms(TARGET_P50_S)} → {verdict}")
    print(f"  floor: the STT's end_silence ({ms(end_silence())} of silence ends an utterance)")
    for row in one["rows"][: len(SENTENCES)]:
        print(f"  said {row['sentence']!r:40} understood {row['understood']!r}")
    states = sorted({s for row in one["rows"] for s in row["states"]})
    print(f"  lk.agent.state values seen after the utterances: {', '.join(states) or 'none'}")
    if "thinking" not in states:
        print(
            "  (no `thinking`: the echo answers with session.say(), no LLM turn,"
            " so the split is STT final → speaking)"
        )
    print("\ncpu of the agent's processes (worker + job processes), in cores:")
    print(f"  idle (started, no room)        {results['agent_idle_cpu'] * 100:.1f}%")
    for key in ("one", "many"):
        if key in results:
            r = results[key]
            print(
                f"  {r['conversations']} conversation(s) at once     {r['agent_cpu'] * 100:.1f}%"
                f" = {r['agent_cpu_per_conversation'] * 100:.1f}% per conversation"
                f" (server {r['server_cpu'] * 100:.1f}%, participants {r['client_cpu'] * 100:.1f}%;"
                f" {r['answered']}/{r['utterances']} answered)"
            )
            if r["other_cpu"] is not None and r["other_cpu"] > NOISY_OTHER_CPU:
                print(f"    note: other processes used {r['other_cpu'] * 100:.0f}% of a core meanwhile")
    if "many" in results:
        many = results["many"]
        print(f"\nvoice to voice with {many['conversations']} conversations at once:")
        print_splits(many)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--utterances", type=int, default=20, help="sentences in the timed conversation")
    parser.add_argument(
        "--conversations", type=int, default=2, help="rooms talking at once for the CPU phase (1: skip it)"
    )
    parser.add_argument("--cpu-utterances", type=int, default=5, help="sentences per room in the CPU phase")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.utterances < 1 or args.conversations < 1 or args.cpu_utterances < 1:
        parser.error("counts must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("livekit").setLevel(logging.ERROR)
    info = machine()
    try:
        with agents_server({f"agent-{AGENT}.yaml": SAMPLE.read_text()}) as server:
            results = asyncio.run(run(server, args))
    except (RuntimeError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"machine": info, **results}, indent=2))
    else:
        print_report(info, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
