"""The built-in offline TTS: espeak-ng as a livekit-agents TTS, heard back through pocketsphinx."""

import struct
from pathlib import Path

import pytest
from livekit import rtc
from livekit.agents import APIConnectOptions, APIError, tts

from switchboard.agents.services.espeak_tts import (
    SAMPLE_RATE,
    EspeakError,
    EspeakOptions,
    EspeakTTS,
    probe,
    wav_header,
)
from switchboard.agents.services.pocketsphinx_stt import PocketSphinxSTT


async def synthesize(engine: EspeakTTS, text: str) -> rtc.AudioFrame:
    return rtc.combine_audio_frames([event.frame async for event in engine.synthesize(text)])


async def heard(frame: rtc.AudioFrame) -> str:
    """What pocketsphinx understands of `frame`."""
    recognizer = PocketSphinxSTT()
    event = await recognizer.recognize(frame)
    await recognizer.aclose()
    return event.alternatives[0].text


def test_settings_are_checked_key_by_key() -> None:
    options = EspeakOptions.from_settings({"voice": "en-gb", "speed": 200, "pitch": 0, "amplitude": 150})
    assert options.command()[-8:] == ["-v", "en-gb", "-s", "200", "-p", "0", "-a", "150"]
    assert "--stdin" in options.command()  # the text never reaches the command line
    for settings, message in (
        ({"rate": 1}, "rate: unknown setting"),
        ({"voice": ""}, "voice: expected a non-empty string"),
        ({"voice": "-w/tmp/x"}, "voice: not a voice name"),
        ({"speed": 20}, "speed: expected a whole number from 80 to 450"),
        ({"pitch": 1.5}, "pitch: expected a whole number"),
        ({"amplitude": True}, "amplitude: expected a whole number"),
    ):
        with pytest.raises(ValueError, match=message):
            EspeakOptions.from_settings(settings)


def test_the_wav_header_is_read_however_the_pipe_cuts_it() -> None:
    fmt = struct.pack("<HHIIHH", 1, 1, 22050, 44100, 2, 16)
    # espeak-ng on a pipe: sizes it cannot know, and an extra chunk before the data for good measure
    stream = b"RIFF\xff\xff\xff\x7fWAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    stream += b"LIST" + struct.pack("<I", 3) + b"abc\0" + b"data\xff\xff\xff\x7f" + b"\x01\x02"
    length = len(stream) - 2
    assert all(wav_header(stream[:cut]) is None for cut in range(length))
    assert wav_header(stream) == wav_header(stream[:length]) == (22050, length)

    stereo = stream.replace(fmt, struct.pack("<HHIIHH", 1, 2, 22050, 88200, 4, 16))
    with pytest.raises(ValueError, match="expected 16-bit mono PCM"):
        wav_header(stereo)
    with pytest.raises(ValueError, match="not a WAV stream"):
        wav_header(b"ID3\x04" + bytes(20))


async def test_speech_comes_out_as_16_bit_mono_at_espeak_rate_and_is_understood() -> None:
    engine = EspeakTTS()
    assert (engine.sample_rate, engine.num_channels, engine.capabilities.streaming) == (SAMPLE_RATE, 1, False)
    frame = await synthesize(engine, "Please call me back tomorrow morning.")
    await engine.aclose()
    assert (frame.sample_rate, frame.num_channels) == (SAMPLE_RATE, 1)
    assert 1.0 < frame.duration < 4.0
    assert "tomorrow morning" in await heard(frame)


async def test_sentences_through_the_frameworks_stream_adapter() -> None:
    """AgentSession's own path for a TTS that takes whole texts: sentence by sentence."""
    engine = EspeakTTS(EspeakOptions(speed=150))
    adapter = tts.StreamAdapter(tts=engine)
    async with adapter.stream() as stream:
        for token in ("What is the weather ", "like today? I would like ", "a cup of coffee."):
            stream.push_text(token)
        stream.end_input()
        events = [event async for event in stream]
    await adapter.aclose()
    assert len({event.segment_id for event in events}) == 1
    text = await heard(rtc.combine_audio_frames([event.frame for event in events]))
    # The bundled model on a synthetic voice is far from perfect, but both sentences come through.
    assert "weather" in text and "would like" in text, text


async def test_an_unknown_voice_or_a_missing_program_is_reported_not_retried() -> None:
    assert probe(EspeakOptions()) == SAMPLE_RATE
    with pytest.raises(EspeakError, match=r"voice 'nosuch' failed: .*does not exist"):
        probe(EspeakOptions(voice="nosuch"))
    with pytest.raises(EspeakError, match="'/nonexistent/espeak-ng' not found: install espeak-ng"):
        probe(EspeakOptions(executable="/nonexistent/espeak-ng"))

    for options, message in (
        (EspeakOptions(voice="nosuch"), "espeak-ng gave no audio .*does not exist"),
        (EspeakOptions(executable="/nonexistent/espeak-ng"), "cannot run /nonexistent/espeak-ng"),
    ):
        engine = EspeakTTS(options)
        # Retries would be allowed, but these errors say they are not worth one.
        with pytest.raises(APIError, match=message):
            async for _ in engine.synthesize("hello", conn_options=APIConnectOptions(max_retry=3)):
                pass


def espeak_children() -> list[int]:
    children = []
    for task in Path("/proc/self/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    return [pid for pid in children if Path(f"/proc/{pid}/comm").read_text().strip() == "espeak-ng"]


async def test_a_synthesis_cut_short_ends_its_process() -> None:
    """An interrupted agent stops speaking at once: the rest of the text is not synthesised."""
    engine = EspeakTTS()
    stream = engine.synthesize("This sentence is long enough to be interrupted. " * 20)
    await stream.__anext__()
    assert len(espeak_children()) == 1
    await stream.aclose()
    assert espeak_children() == []
