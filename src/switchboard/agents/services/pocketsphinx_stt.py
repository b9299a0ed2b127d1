"""Offline streaming speech-to-text for livekit-agents: pocketsphinx, whose wheel ships an en-US model.

No network and no download: a captions agent works on a machine with nothing but PyPI. Speech is cut
into utterances by pocketsphinx's voice activity detector (see Segmenter); each utterance gives interim
results while it is spoken and one final result when it ends.
"""

import asyncio
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pocketsphinx
from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents.language import LanguageCode
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions, NotGivenOr

SAMPLE_RATE = 16000  # the rate of the bundled acoustic model
LANGUAGE = "en-US"


@dataclass(frozen=True)
class PocketSphinxOptions:
    """The `pocketsphinx:` section of `live_captions`; every key is optional."""

    acoustic_model: str | None = None
    """Acoustic model directory (default: the bundled en-US model)."""
    language_model: str | None = None
    """Language model file (default: the bundled en-US model's)."""
    dictionary: str | None = None
    """Pronunciation dictionary file (default: the bundled en-US one)."""
    language: str = LANGUAGE
    """What results are labelled with; change it together with the models."""
    vad_mode: int = 0
    """How eagerly audio counts as non-speech, 0 (least, pocketsphinx's default) to 3 (most)."""
    start_speech: float = 0.15
    """Seconds of speech that begin an utterance."""
    end_silence: float = 0.5
    """Seconds of silence that end an utterance (and give its final result)."""
    interim_interval: float = 0.25
    """Seconds of speech between two interim results."""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "PocketSphinxOptions":
        """Build from the config section; raises ValueError naming the bad key."""
        known = cls.__dataclass_fields__
        for key in settings:
            if key not in known:
                raise ValueError(f"{key}: unknown setting (expected one of {', '.join(known)})")
        for key in ("acoustic_model", "language_model", "dictionary", "language"):
            if key in settings and not isinstance(settings[key], str):
                raise ValueError(f"{key}: expected a string, got {settings[key]!r}")
        if "vad_mode" in settings and settings["vad_mode"] not in (0, 1, 2, 3):
            raise ValueError(f"vad_mode: expected 0, 1, 2 or 3, got {settings['vad_mode']!r}")
        for key in ("start_speech", "end_silence", "interim_interval"):
            value = settings.get(key, 1.0)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 10:
                raise ValueError(f"{key}: expected seconds between 0 and 10, got {value!r}")
        return cls(**settings)

    def decoder_config(self) -> dict[str, Any]:
        paths = {"hmm": self.acoustic_model, "lm": self.language_model, "dict": self.dictionary}
        # No lattice best-path pass: on bench/captions.py's sentences, decoded whole, it made finals worse
        # than the interim results before them (word error rate 47 % with it, 33 % without). Faster
        # settings (maxhmmpf 3000, or no flat pass) halved the CPU but raised the benchmark's word error
        # rate from 24 % to 31-34 %: accuracy is kept.
        decoder = {"samprate": SAMPLE_RATE, "loglevel": "ERROR", "bestpath": False}
        return decoder | {k: v for k, v in paths.items() if v}


class Segmenter:
    """Cuts audio into utterances with pocketsphinx's voice activity detector, 30 ms at a time.

    pocketsphinx's own Endpointer uses one window for both ends, and it must be long (0.5 s) so that a
    pause inside a sentence does not end it; speech then begins only 0.46 s after the first word. Here
    a short window begins an utterance and the long one ends it: on bench/captions.py's sentences,
    speech was detected 0.13 s after its onset, at the same word error rate (0.35 against 0.34).
    """

    RATIO = 0.9  # of a window's frames, speech to begin an utterance, non-speech to end it
    LEAD_IN = 0.2  # seconds kept from before the start window, so that no word onset is lost

    def __init__(self, options: PocketSphinxOptions) -> None:
        self._vad = pocketsphinx.Vad(options.vad_mode, SAMPLE_RATE)
        self.frame_bytes: int = self._vad.frame_bytes
        self.frame_length: float = self._vad.frame_length
        start = max(1, round(options.start_speech / self.frame_length))
        self._start: deque[bool] = deque(maxlen=start)
        self._end: deque[bool] = deque(maxlen=max(1, round(options.end_silence / self.frame_length)))
        self._before: deque[bytes] = deque(maxlen=start + round(self.LEAD_IN / self.frame_length))
        self._frames = 0
        self.in_speech = False
        self.speech_start = 0.0
        self.speech_end = 0.0

    @property
    def now(self) -> float:
        return self._frames * self.frame_length

    def process(self, frame: bytes) -> bytes | None:
        """What of the audio to decode now: None outside speech; at a start, the frames before it too."""
        self._frames += 1
        speech = self._vad.is_speech(frame)
        if not self.in_speech:
            self._start.append(speech)
            self._before.append(frame)
            if not self._full(self._start):
                return None
            self.in_speech = True
            self.speech_start = self.now - len(self._before) * self.frame_length
            audio = b"".join(self._before)
            self._before.clear()
            self._start.clear()
            self._end.clear()
            return audio
        self._end.append(not speech)
        if self._full(self._end):
            self.end()
        return frame

    def end(self) -> None:
        """The utterance is over (its silence was heard, or the input ended)."""
        self.in_speech = False
        self.speech_end = self.now
        self._start.clear()
        self._before.clear()

    def _full(self, window: "deque[bool]") -> bool:
        assert window.maxlen is not None
        return len(window) == window.maxlen and sum(window) >= self.RATIO * window.maxlen


class DecoderPool:
    """Decoders shared by the audio streams of one STT (one room's participants).

    A decoder holds about 90 MB of models and search state, and is needed only while someone speaks: it
    is taken at the start of an utterance and given back at its end. A room of twenty mostly silent
    participants then needs about as many decoders as people speaking at once, not twenty. (Live
    cepstral normalisation carries over from one speaker to the next: a small cost in accuracy.)
    """

    def __init__(self, options: PocketSphinxOptions, keep_idle: int = 2) -> None:
        self.options = options
        self.keep_idle = keep_idle
        self.created = 0
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Have one decoder ready, so that a first utterance does not wait for the models to load."""
        with self._lock:
            if not self._idle:
                self.created += 1
                self._idle.append(pocketsphinx.Decoder(**self.options.decoder_config()))

    def acquire(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self.created += 1
        # Outside the lock: loading takes about 0.3 s. (pocketsphinx holds the GIL meanwhile, so the
        # job's event loop waits too: that is why a stream loads one ahead, in prepare().)
        return pocketsphinx.Decoder(**self.options.decoder_config())

    def release(self, decoder: Any) -> None:
        with self._lock:
            if len(self._idle) < self.keep_idle:  # beyond that, a burst's extra decoders are freed
                self._idle.append(decoder)


class Utterances:
    """Synchronous core: 16 kHz mono PCM in, speech events out. One per audio stream."""

    def __init__(self, options: PocketSphinxOptions, decoders: DecoderPool | None = None) -> None:
        self.options = options
        self._decoders = decoders or DecoderPool(options)
        self._decoder: Any = None
        """Held from the start of an utterance to its end: while someone speaks."""
        self._segmenter = Segmenter(options)
        self._fed = 0.0
        self._reported = 0.0
        """Seconds of audio already counted in a RECOGNITION_USAGE event."""
        self._frame_bytes = self._segmenter.frame_bytes
        self._interim_bytes = max(1, round(options.interim_interval / self._segmenter.frame_length))
        self._interim_bytes *= self._frame_bytes
        self._pending = bytearray()
        self._since_interim = 0
        """Bytes of speech decoded since the last interim result."""
        self._last_interim = ""

    def feed(self, pcm: bytes) -> list[stt.SpeechEvent]:
        self._pending += pcm
        self._fed += len(pcm) / 2 / SAMPLE_RATE
        events: list[stt.SpeechEvent] = []
        while len(self._pending) >= self._frame_bytes:
            frame = bytes(self._pending[: self._frame_bytes])
            del self._pending[: self._frame_bytes]
            speech = self._segmenter.process(frame)
            if speech is not None:
                events += self._speech(speech)
            if self._decoder is not None and not self._segmenter.in_speech:
                events += self._end_utterance()
        return events

    def finish(self) -> list[stt.SpeechEvent]:
        """End of input, or a flush: whatever was being said is final now."""
        events: list[stt.SpeechEvent] = []
        if self._decoder is not None and self._pending:  # the last bit of a frame, spoken
            events += self._speech(bytes(self._pending).ljust(self._frame_bytes, b"\0"))
        self._pending.clear()
        self._segmenter.end()
        if self._decoder is not None:
            events += self._end_utterance()
        return events + self._usage()

    def _speech(self, speech: bytes) -> list[stt.SpeechEvent]:
        events = []
        if self._decoder is None:
            self._since_interim = 0
            self._last_interim = ""
            self._decoder = self._decoders.acquire()
            self._decoder.start_utt()
            events.append(stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH))
        self._decoder.process_raw(speech)
        self._since_interim += len(speech)
        if self._since_interim >= self._interim_bytes:
            self._since_interim = 0
            text = self._hypothesis()
            if text and text != self._last_interim:
                self._last_interim = text
                events.append(self._event(stt.SpeechEventType.INTERIM_TRANSCRIPT, text))
        return events

    def _end_utterance(self) -> list[stt.SpeechEvent]:
        self._decoder.end_utt()
        text = self._hypothesis()
        self._decoders.release(self._decoder)
        self._decoder = None
        events = [self._event(stt.SpeechEventType.FINAL_TRANSCRIPT, text)] if text else []
        return [*events, stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH), *self._usage()]

    def _usage(self) -> list[stt.SpeechEvent]:
        """The audio heard since the last report, silence included (as the framework's STT metrics and
        the cloud providers count it); reported at each utterance's end and at the stream's."""
        heard, self._reported = self._fed - self._reported, self._fed
        if heard <= 0:
            return []
        usage = stt.RecognitionUsage(audio_duration=heard)
        return [stt.SpeechEvent(type=stt.SpeechEventType.RECOGNITION_USAGE, recognition_usage=usage)]

    def _hypothesis(self) -> str:
        hypothesis = self._decoder.hyp()
        return hypothesis.hypstr.strip() if hypothesis is not None else ""

    def _event(self, kind: stt.SpeechEventType, text: str) -> stt.SpeechEvent:
        data = stt.SpeechData(
            language=LanguageCode(self.options.language),
            text=text,
            start_time=self._segmenter.speech_start,
            end_time=self._segmenter.speech_end if kind == stt.SpeechEventType.FINAL_TRANSCRIPT else 0.0,
        )
        return stt.SpeechEvent(type=kind, alternatives=[data])


class PocketSphinxSTT(stt.STT[Any]):
    """livekit-agents STT on pocketsphinx: streaming with interim results, and batch recognition."""

    def __init__(self, options: PocketSphinxOptions | None = None) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=True))
        self.options = options or PocketSphinxOptions()
        self.decoders = DecoderPool(self.options)

    @property
    def provider(self) -> str:
        return "pocketsphinx"

    @property
    def model(self) -> str:
        return self.options.acoustic_model or "en-us"

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        pcm = _pcm16k(rtc.combine_audio_frames(buffer))

        def decode() -> str:
            decoder = self.decoders.acquire()
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            hypothesis = decoder.hyp()
            self.decoders.release(decoder)  # only a decoder that ended its utterance goes back
            return hypothesis.hypstr.strip() if hypothesis is not None else ""

        text = await asyncio.to_thread(decode)
        data = stt.SpeechData(language=LanguageCode(self.options.language), text=text)
        return stt.SpeechEvent(type=stt.SpeechEventType.FINAL_TRANSCRIPT, alternatives=[data])

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> "PocketSphinxStream":
        return PocketSphinxStream(stt=self, conn_options=conn_options)


class PocketSphinxStream(stt.RecognizeStream):
    def __init__(self, *, stt: PocketSphinxSTT, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=stt, conn_options=conn_options, sample_rate=SAMPLE_RATE)
        self._options = stt.options
        self._decoders = stt.decoders

    async def _run(self) -> None:
        # Decoding is CPU work in C: it runs off the event loop, one step at a time so results keep
        # their order.
        await asyncio.to_thread(self._decoders.prepare)
        utterances = Utterances(self._options, self._decoders)
        async for item in self._input_ch:
            if isinstance(item, self._FlushSentinel):
                events = await asyncio.to_thread(utterances.finish)
            else:
                events = await asyncio.to_thread(utterances.feed, _pcm16k(item))
            for event in events:
                for data in event.alternatives:  # times within this stream → within the session
                    data.start_time += self.start_time_offset
                    data.end_time += self.start_time_offset if data.end_time else 0.0
                self._event_ch.send_nowait(event)
        # end_input() flushes before it closes the input, so the last utterance is already final here.


def _pcm16k(frame: rtc.AudioFrame) -> bytes:
    """Mono 16-bit PCM; the stream has already resampled to 16 kHz (batch input is resampled here)."""
    if frame.sample_rate != SAMPLE_RATE:
        resampler = rtc.AudioResampler(frame.sample_rate, SAMPLE_RATE, num_channels=frame.num_channels)
        frames = [*resampler.push(frame), *resampler.flush()]
        frame = rtc.combine_audio_frames(frames)
    samples = np.frombuffer(frame.data, dtype=np.int16)
    if frame.num_channels > 1:
        samples = samples.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
    return samples.tobytes()
