"""Offline text-to-speech for livekit-agents: espeak-ng (Debian's `espeak-ng` package), as a subprocess.

No network and no download. Each text is one `espeak-ng --stdout` process; the WAV it writes is passed on
as it comes, 16-bit mono at espeak-ng's own rate (22,050 Hz for its voices), without resampling here. The
TTS takes whole texts (`streaming=False`): `AgentSession` wraps it in the framework's own StreamAdapter,
which cuts the agent's text into sentences, so the first sentence is spoken while the next are written.
"""

import asyncio
import contextlib
import shutil
import struct
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from livekit.agents import APIConnectOptions, APIError, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS

SAMPLE_RATE = 22050  # espeak-ng's output rate for its own voices (mbrola voices give 16 kHz)
CHUNK_BYTES = 4096
PROBE_TIMEOUT = 10.0


class EspeakError(Exception):
    """espeak-ng cannot be run with these options (missing program, unknown voice)."""


@dataclass(frozen=True)
class EspeakOptions:
    """The `espeak:` section of a voice service; every key is optional."""

    voice: str = "en-us"
    """An espeak-ng voice (`espeak-ng --voices` lists them), e.g. en-us, en-gb, fr, de."""
    speed: int = 160
    """Words per minute, 80 to 450."""
    pitch: int = 50
    """0 to 99."""
    amplitude: int = 100
    """Volume, 0 to 200."""
    executable: str = "espeak-ng"
    """The program to run: a name looked up in PATH, or a path."""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "EspeakOptions":
        """Build from the config section; raises ValueError naming the bad key."""
        known = cls.__dataclass_fields__
        for key in settings:
            if key not in known:
                raise ValueError(f"{key}: unknown setting (expected one of {', '.join(known)})")
        for key in ("voice", "executable"):
            if key in settings and (not isinstance(settings[key], str) or not settings[key].strip()):
                raise ValueError(f"{key}: expected a non-empty string, got {settings[key]!r}")
        if str(settings.get("voice", "")).startswith("-"):
            raise ValueError(f"voice: not a voice name: {settings['voice']!r}")
        for key, low, high in (("speed", 80, 450), ("pitch", 0, 99), ("amplitude", 0, 200)):
            value = settings.get(key, low)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{key}: expected a whole number from {low} to {high}, got {value!r}")
        return cls(**settings)

    def command(self) -> list[str]:
        """The espeak-ng command line; the text goes to its standard input, never into its options."""
        settings = ["-v", self.voice, "-s", str(self.speed), "-p", str(self.pitch), "-a", str(self.amplitude)]
        return [self.executable, "--stdout", "--stdin", *settings]


def probe(options: EspeakOptions) -> int:
    """Run espeak-ng once with these options; its sample rate, or an EspeakError saying what is wrong.

    For checking a config before any job: the program must be installed and the voice must exist.
    """
    if shutil.which(options.executable) is None:
        raise EspeakError(
            f"'{options.executable}' not found: install espeak-ng (Debian/Ubuntu: apt-get install espeak-ng)"
        )
    try:
        done = subprocess.run(
            options.command(), input=b"test", capture_output=True, timeout=PROBE_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EspeakError(f"'{options.executable}' could not be run: {exc}") from exc
    header = wav_header(done.stdout) if done.returncode == 0 else None
    if header is None:
        problem = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
        raise EspeakError(f"espeak-ng with voice '{options.voice}' failed: {problem}")
    return header[0]


def wav_header(data: bytes) -> tuple[int, int] | None:
    """(sample rate, length of the header) of a 16-bit mono PCM WAV, or None until `data` holds all of
    the header. espeak-ng writing to a pipe cannot know its length: the sizes it writes are not used."""
    if len(data) < 12:
        return None
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV stream")
    offset, rate = 12, 0
    while len(data) >= offset + 8:
        chunk, size = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        if chunk == b"data":
            if not rate:
                raise ValueError("WAV data before its format")
            return rate, offset + 8
        if len(data) < offset + 8 + size:
            return None
        if chunk == b"fmt ":
            audio_format, channels, rate = struct.unpack_from("<HHI", data, offset + 8)
            bits = struct.unpack_from("<H", data, offset + 22)[0]
            if (audio_format, channels, bits) != (1, 1, 16):
                raise ValueError(f"expected 16-bit mono PCM, got format {audio_format}, {channels} "
                                 f"channel(s), {bits} bits")  # fmt: skip
        offset += 8 + size + (size & 1)  # chunks are padded to an even length
    return None


class EspeakTTS(tts.TTS[Any]):
    """livekit-agents TTS on espeak-ng: one text in, its speech out as it is synthesised."""

    def __init__(self, options: EspeakOptions | None = None, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False), sample_rate=sample_rate, num_channels=1
        )
        self.options = options or EspeakOptions()

    @property
    def provider(self) -> str:
        return "espeak-ng"

    @property
    def model(self) -> str:
        return self.options.voice

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> "EspeakChunkedStream":
        return EspeakChunkedStream(tts=self, input_text=text, conn_options=conn_options)


class EspeakChunkedStream(tts.ChunkedStream):
    def __init__(self, *, tts: EspeakTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._options = tts.options

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                *self._options.command(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        # espeak-ng is local and deterministic: what failed once fails again, so no error is retryable.
        except OSError as exc:
            raise APIError(f"cannot run {self._options.executable}: {exc}", retryable=False) from exc
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        # Written beside the reading: a long text would otherwise fill both pipes and stall both sides.
        feeding = asyncio.create_task(_feed(process.stdin, self._input_text.encode()))
        errors = asyncio.create_task(process.stderr.read())
        try:
            received = b""
            header = None
            while header is None:
                chunk = await process.stdout.read(CHUNK_BYTES)
                if not chunk:
                    break
                received += chunk
                header = wav_header(received)
            if header is None:
                await process.wait()
                problem = (await errors).decode(errors="replace").strip()
                raise APIError(
                    f"espeak-ng gave no audio (exit status {process.returncode}): {problem}", retryable=False
                )
            rate, length = header
            output_emitter.initialize(
                request_id=utils.shortuuid(), sample_rate=rate, num_channels=1, mime_type="audio/pcm"
            )
            if received[length:]:
                output_emitter.push(received[length:])
            while chunk := await process.stdout.read(CHUNK_BYTES):
                output_emitter.push(chunk)
            if await process.wait() != 0:
                problem = (await errors).decode(errors="replace").strip()
                raise APIError(
                    f"espeak-ng failed (exit status {process.returncode}): {problem}", retryable=False
                )
            output_emitter.flush()
        finally:
            if process.returncode is None:  # interrupted: the agent stopped speaking
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            await utils.aio.cancel_and_wait(feeding, errors)


async def _feed(stdin: asyncio.StreamWriter, text: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(text)
        await stdin.drain()
        stdin.close()
