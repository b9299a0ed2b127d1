"""The built-in offline STT on synthesised speech: utterances, interim and final results, both APIs."""

import asyncio

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import stt

from switchboard.agents.services.pocketsphinx_stt import (
    SAMPLE_RATE,
    DecoderPool,
    PocketSphinxOptions,
    PocketSphinxSTT,
    Segmenter,
    Utterances,
)
from tests.speech import frames, silence, speak

Kind = stt.SpeechEventType


def kinds(events: list[stt.SpeechEvent]) -> list[Kind]:
    return [e.type for e in events if e.type not in (Kind.INTERIM_TRANSCRIPT, Kind.RECOGNITION_USAGE)]


def usage(events: list[stt.SpeechEvent]) -> float:
    return sum(e.recognition_usage.audio_duration for e in events if e.recognition_usage is not None)


def finals(events: list[stt.SpeechEvent]) -> list[str]:
    return [e.alternatives[0].text for e in events if e.type == Kind.FINAL_TRANSCRIPT]


def test_each_utterance_gives_interim_results_then_one_final() -> None:
    utterances = Utterances(PocketSphinxOptions())
    audio = silence(0.5, SAMPLE_RATE)
    for sentence in ("what is the weather like today", "i would like a cup of coffee"):
        audio += speak(sentence, SAMPLE_RATE) + silence(1.5, SAMPLE_RATE)
    events = [e for frame in frames(audio, SAMPLE_RATE) for e in utterances.feed(bytes(frame.data))]
    events += utterances.finish()

    assert kinds(events) == [Kind.START_OF_SPEECH, Kind.FINAL_TRANSCRIPT, Kind.END_OF_SPEECH] * 2
    assert usage(events) == pytest.approx(len(audio) / 2 / SAMPLE_RATE, abs=0.01)  # silence included
    first, second = finals(events)
    # The bundled model on a synthetic voice is far from perfect (bench/captions.py measures how far),
    # but the gist comes through.
    assert "weather" in first and "would like" in second, (first, second)
    interims = [e for e in events if e.type == Kind.INTERIM_TRANSCRIPT]
    assert len(interims) >= 4 and all(e.alternatives[0].text for e in interims)
    final = next(e for e in events if e.type == Kind.FINAL_TRANSCRIPT).alternatives[0]
    assert (
        0.2 < final.start_time < final.end_time and final.language == "en-US"
    )  # after the 0.5 s silence, with lead-in


def test_silence_gives_nothing_and_finish_ends_an_open_utterance() -> None:
    utterances = Utterances(PocketSphinxOptions())
    assert utterances.feed(silence(2, SAMPLE_RATE)) == []
    events = utterances.feed(speak("hello world this is a test", SAMPLE_RATE))
    assert kinds(events) == [Kind.START_OF_SPEECH]
    assert kinds(utterances.finish()) == [Kind.FINAL_TRANSCRIPT, Kind.END_OF_SPEECH]
    assert utterances.finish() == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model": "big"}, "model: unknown setting"),
        ({"vad_mode": 7}, "vad_mode: expected 0, 1, 2 or 3"),
        ({"end_silence": "long"}, "end_silence: expected seconds"),
        ({"interim_interval": 0}, "interim_interval: expected seconds"),
        ({"dictionary": 3}, "dictionary: expected a string"),
    ],
)
def test_settings_are_checked(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PocketSphinxOptions.from_settings(settings)


async def test_streaming_and_batch_through_the_livekit_agents_api() -> None:
    engine = PocketSphinxSTT()
    assert engine.capabilities.streaming and engine.capabilities.interim_results
    audio = silence(0.5) + speak("what is the weather like today") + silence(1.5)
    stream = engine.stream()
    for frame in frames(audio):  # 48 kHz, as a room delivers it: the stream resamples
        stream.push_frame(frame)
    stream.end_input()
    events = [event async for event in stream]
    assert kinds(events) == [Kind.START_OF_SPEECH, Kind.FINAL_TRANSCRIPT, Kind.END_OF_SPEECH]
    assert "weather" in finals(events)[0]

    result = await engine.recognize([rtc.AudioFrame(audio, 48000, 1, len(audio) // 2)])
    assert result.type == Kind.FINAL_TRANSCRIPT and "weather" in result.alternatives[0].text
    await asyncio.gather(stream.aclose(), engine.aclose())


def test_finish_takes_out_what_the_endpointer_still_holds() -> None:
    # Speech that ends exactly on a frame boundary, with no silence after it: the endpointer holds the
    # last half second, which only end_stream gives back.
    speech = np.frombuffer(speak("what is the weather like today", SAMPLE_RATE), dtype=np.int16)
    spoken = speech[: np.flatnonzero(np.abs(speech) > 500)[-1]].tobytes()  # without espeak's trailing pause
    frame_bytes = 960
    audio = silence(0.5, SAMPLE_RATE) + spoken
    audio = audio[: len(audio) // frame_bytes * frame_bytes]
    utterances = Utterances(PocketSphinxOptions())
    events = utterances.feed(audio) + utterances.finish()
    [final] = [e.alternatives[0] for e in events if e.type == Kind.FINAL_TRANSCRIPT]
    assert "weather" in final.text and final.end_time > len(audio) / 2 / SAMPLE_RATE - 0.1


def test_after_a_flush_times_go_on_from_where_they_were() -> None:
    utterances = Utterances(PocketSphinxOptions())
    sentence = silence(0.5, SAMPLE_RATE) + speak("what is the weather like today", SAMPLE_RATE)
    first = utterances.feed(sentence) + utterances.finish()
    second = utterances.feed(sentence + silence(1.5, SAMPLE_RATE)) + utterances.finish()
    assert kinds(first) == kinds(second) == [Kind.START_OF_SPEECH, Kind.FINAL_TRANSCRIPT, Kind.END_OF_SPEECH]
    [one], [two] = finals(first), finals(second)
    start_one = next(e for e in first if e.type == Kind.FINAL_TRANSCRIPT).alternatives[0].start_time
    start_two = next(e for e in second if e.type == Kind.FINAL_TRANSCRIPT).alternatives[0].start_time
    assert "weather" in one and "weather" in two
    assert start_two > start_one + len(sentence) / 2 / SAMPLE_RATE - 0.3


def test_streams_share_decoders_and_hold_one_only_while_speaking() -> None:
    options = PocketSphinxOptions()
    pool = DecoderPool(options, keep_idle=1)
    alice, bob, carol = (Utterances(options, pool) for _ in range(3))
    sentence = speak("what is the weather like today", SAMPLE_RATE) + silence(1.5, SAMPLE_RATE)
    quiet = silence(len(sentence) / 2 / SAMPLE_RATE, SAMPLE_RATE)

    # One after the other, while the others are silent: one decoder serves them all.
    for speaker in (alice, bob, carol):
        for listener in {alice, bob, carol} - {speaker}:
            assert listener.feed(quiet) == []
        assert "weather" in finals(speaker.feed(sentence))[0]
    assert pool.created == 1

    # Two at once need two; once they are done, only `keep_idle` are kept.
    half = len(sentence) // 4 * 2  # on a sample boundary
    first, second = alice.feed(sentence[:half]), bob.feed(sentence[:half])
    assert kinds(first) == kinds(second) == [Kind.START_OF_SPEECH] and pool.created == 2
    assert finals(alice.feed(sentence[len(sentence) // 2 :])) and finals(
        bob.feed(sentence[len(sentence) // 2 :])
    )
    assert len(pool._idle) == 1


def test_speech_begins_soon_after_its_onset_and_ends_after_the_silence() -> None:
    options = PocketSphinxOptions()
    segmenter = Segmenter(options)
    spoken = np.frombuffer(speak("what is the weather like today", SAMPLE_RATE), dtype=np.int16)
    onset = 0.5 + np.flatnonzero(np.abs(spoken) > 500)[0] / SAMPLE_RATE
    audio = silence(0.5, SAMPLE_RATE) + spoken.tobytes() + silence(1.5, SAMPLE_RATE)
    size = segmenter.frame_bytes
    began = ended = None
    for index in range(len(audio) // size):
        decoded = segmenter.process(audio[index * size : (index + 1) * size])
        if decoded is not None and began is None:
            began = segmenter.now
            assert segmenter.speech_start < onset  # the words' onset is among what is decoded
        if began is not None and ended is None and not segmenter.in_speech:
            ended = segmenter.now
    assert began is not None and began - onset < options.start_speech + 0.1
    speech_end = 0.5 + np.flatnonzero(np.abs(spoken) > 500)[-1] / SAMPLE_RATE
    assert ended is not None and options.end_silence <= ended - speech_end < options.end_silence + 0.2
