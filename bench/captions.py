"""Benchmark the built-in live captions: an automatic speech-processing agent (pocketsphinx) run by the
server itself (`agents_dir`), and participants speaking synthesised sentences (espeak-ng) with the
Python rtc SDK.

  latency   for each of N utterances, the time from the first spoken word to the first interim caption
            and to the final caption received back by the speaker (and the final's delay after the last
            word, which includes the silence that ends an utterance);
  accuracy  word error rate of the final captions against the sentences spoken;
  cpu       CPU of the agent's processes (worker and job processes) per participant being transcribed,
            with 1 and with 4 participants speaking at once.

The server is not pinned: the agent's processes need the CPU as much as the server does here.

    .venv/bin/python bench/captions.py [--utterances 20] [--json]
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common import Server, agents_server, descendants, machine, percentile

# The speech helpers are the tests' own, so that the benchmark speaks exactly as the tests do.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.speech import PUBLISH_RATE, SENTENCES, Speaker, speak

from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token

AGENT = """live_captions:
  processing: automatic
  provider: pocketsphinx
"""
READY_DEADLINE = 120.0  # the agent starts, registers, and its first job joins and subscribes
CAPTION_WAIT = 3.0  # after an utterance's pause, how long its final caption may still take
PAUSE = 1.5  # silence after each sentence: longer than the 0.5 s that ends an utterance
CPU_WINDOW = 15.0
ONSET_LEVEL = 500  # |sample| above which synthesised speech has begun
IDLE_PROCESSES = 5  # `switchboard agent run`, multiprocessing's two helpers, two idle job processes
REPLENISH_SETTLE = 5.0
IDLE_SETTLE = 3.0  # seconds after they exist before idle CPU is read (startup work is over by then)


def speech_span(pcm: bytes) -> tuple[float, float]:
    """Seconds into `pcm` of the first and the last spoken sample (espeak-ng pads with silence)."""
    loud = np.flatnonzero(np.abs(np.frombuffer(pcm, dtype=np.int16)) > ONSET_LEVEL)
    return (float(loud[0]) / PUBLISH_RATE, float(loud[-1]) / PUBLISH_RATE) if loud.size else (0.0, 0.0)


def word_errors(reference: str, hypothesis: str) -> int:
    """Word-level edit distance."""
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, heard in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != heard))
    return row[-1]


def agents_cpu_seconds(server_pid: int) -> float:
    """CPU time of every process below the server, including those already ended: a reaped process's
    time is in its parent's cutime and cstime."""
    total = 0.0
    for pid in descendants(server_pid):
        with contextlib.suppress(OSError):  # a process that ended between the listing and the reading
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


class Bench:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.ws_url = server.url.replace("http://", "ws://", 1)

    async def speaker(self, identity: str, room: str) -> Speaker:
        speaker = Speaker(identity)
        video = VideoGrant(room_join=True, room=room)
        token = mint_token(self.server.api_key, self.server.api_secret, video=video, identity=identity)
        await speaker.join(self.ws_url, token)
        return speaker

    async def ready(self, speaker: Speaker) -> None:
        """Speak until the agent captions this speaker: it has started, joined and subscribed."""
        deadline = time.monotonic() + READY_DEADLINE
        for sentence in itertools.cycle(SENTENCES):
            await speaker.say(sentence, PAUSE)
            if any(c.sender == speaker.identity for c in speaker.finals()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no caption within {READY_DEADLINE:.0f}s: is espeak-ng installed?")

    async def latency_and_accuracy(self, utterances: int) -> dict[str, Any]:
        speaker = await self.speaker("speaker", f"captions-{uuid.uuid4().hex[:8]}")
        try:
            await self.ready(speaker)
            rows = []
            for sentence in itertools.islice(itertools.cycle(SENTENCES), utterances):
                pcm = speak(sentence)
                seen = len(speaker.captions)
                began = await speaker.say(sentence, PAUSE)
                first_word, last_word = speech_span(pcm)
                onset, speech_end = began + first_word, began + last_word
                deadline = time.monotonic() + CAPTION_WAIT
                # Polled: captions arrive on the SDK's own tasks; this wait is not part of any figure.
                while time.monotonic() < deadline and not any(c.final for c in speaker.captions[seen:]):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                captions = [c for c in speaker.captions[seen:] if c.sender == speaker.identity]
                finals = [c for c in captions if c.final]
                rows.append(
                    {
                        "sentence": sentence,
                        "heard": " ".join(c.text for c in finals),
                        "first_caption_s": captions[0].received_at - onset if captions else None,
                        "final_s": finals[0].received_at - onset if finals else None,
                        "final_after_speech_s": finals[0].received_at - speech_end if finals else None,
                        "errors": word_errors(sentence, " ".join(c.text for c in finals)),
                        "words": len(sentence.split()),
                    }
                )
        finally:
            await speaker.leave()

        def p50(key: str) -> float | None:
            values = sorted(r[key] for r in rows if r[key] is not None)
            return percentile(values, 0.5) if values else None

        return {
            "utterances": len(rows),
            "captioned": sum(1 for r in rows if r["final_s"] is not None),
            "first_caption_p50_s": p50("first_caption_s"),
            "final_p50_s": p50("final_s"),
            "final_after_speech_p50_s": p50("final_after_speech_s"),
            "word_error_rate": sum(r["errors"] for r in rows) / sum(r["words"] for r in rows),
            "rows": rows,
        }

    async def cpu(self, speakers: int) -> dict[str, Any]:
        assert self.server.pid is not None
        room = f"captions-cpu-{uuid.uuid4().hex[:8]}"
        joined = [await self.speaker(f"speaker-{i}", room) for i in range(speakers)]
        try:
            await asyncio.gather(*(self.ready(s) for s in joined))
            # The room's job took an idle job process, and the agent starts a new one to replace it:
            # that start-up is not transcription, so it is let finish first.
            await asyncio.sleep(REPLENISH_SETTLE)

            async def keep_talking(speaker: Speaker, until: float) -> None:
                for sentence in itertools.cycle(SENTENCES):
                    if time.monotonic() >= until:
                        return
                    await speaker.say(sentence, PAUSE)

            before, started = agents_cpu_seconds(self.server.pid), time.monotonic()
            await asyncio.gather(*(keep_talking(s, started + CPU_WINDOW) for s in joined))
            elapsed = time.monotonic() - started
            used = (agents_cpu_seconds(self.server.pid) - before) / elapsed
            # Each speaker's own final captions in the window: every one of them was transcribed.
            captioned = [
                sum(1 for c in s.finals() if c.sender == s.identity and c.received_at > started)
                for s in joined
            ]
        finally:
            for speaker in joined:
                await speaker.leave()
        return {
            "speakers": speakers,
            "agent_cpu": used,
            "per_speaker": used / speakers,
            "seconds": elapsed,
            "finals_per_speaker": captioned,
        }

    async def idle_cpu(self) -> float:
        """The agent's processes with nothing to do, once started (worker and its idle job processes)."""
        assert self.server.pid is not None
        deadline = time.monotonic() + READY_DEADLINE
        while len(descendants(self.server.pid)) < IDLE_PROCESSES and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        await asyncio.sleep(IDLE_SETTLE)
        before, started = agents_cpu_seconds(self.server.pid), time.monotonic()
        await asyncio.sleep(5)
        return (agents_cpu_seconds(self.server.pid) - before) / (time.monotonic() - started)


async def run(server: Server, utterances: int) -> dict[str, Any]:
    bench = Bench(server)
    results: dict[str, Any] = {"agent_idle_cpu": await bench.idle_cpu()}
    results["latency"] = await bench.latency_and_accuracy(utterances)
    results["cpu"] = [await bench.cpu(1), await bench.cpu(4)]
    return results


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def print_report(info: dict[str, Any], results: dict[str, Any]) -> None:
    print(f"machine: {info}")
    latency = results["latency"]
    print(f"\nlatency, {latency['utterances']} utterances ({latency['captioned']} captioned), p50:")
    print(f"  first word → first caption (interim)  {seconds(latency['first_caption_p50_s'])}")
    print(f"  first word → final caption            {seconds(latency['final_p50_s'])}")
    print(
        f"  last word  → final caption            {seconds(latency['final_after_speech_p50_s'])}"
        "   (floor: the 0.5 s of silence that ends an utterance)"
    )
    error_rate = latency["word_error_rate"] * 100
    print(f"\naccuracy: word error rate {error_rate:.0f}% (pocketsphinx with its bundled en-US model)")
    for row in latency["rows"][: len(SENTENCES)]:
        print(f"  said {row['sentence']!r:42} heard {row['heard']!r}")
    print("\ncpu of the agent's processes (worker + job), in cores:")
    print(f"  idle (started, no room)  {results['agent_idle_cpu'] * 100:.1f}%")
    for sample in results["cpu"]:
        print(
            f"  {sample['speakers']} speaking at once     {sample['agent_cpu'] * 100:.1f}%"
            f" = {sample['per_speaker'] * 100:.1f}% per transcribed participant"
            f" (final captions each: {sample['finals_per_speaker']})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("livekit").setLevel(logging.ERROR)
    info = machine()
    try:
        with agents_server({"agent-captions.yaml": AGENT}) as server:
            results = asyncio.run(run(server, args.utterances))
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
