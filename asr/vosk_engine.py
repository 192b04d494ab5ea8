"""Streaming recognition with Vosk (Kaldi): partial results while the caller speaks,
a final transcript with word times at each pause.

One `vosk.Model` (hundreds of MB) is loaded once per engine and shared by every stream;
each stream owns a cheap `KaldiRecognizer`. Decoding runs in the engine's bounded thread
pool (libvosk is called through cffi, which releases the GIL, so `decode_threads` streams
really decode in parallel) and never on the event loop.

Utterance ends: Kaldi's own endpointer decides from its silence-phone posteriors, which
works on real background noise but, as measured here, never fires on digital silence (the
all-zero frames Asterisk's snoop sends) and fires late or not at all when the model does
not fit the audio. So each stream also runs the cheap webrtcvad detector over the audio it
decodes and forces the final result after `endpoint_silence_ms` of non-speech following
decoded words.

No contextual biasing (unlike Whisper's playbook hotwords, asr.biasing). What vosk 0.3.45 offers
was checked: KaldiRecognizer's grammar (a JSON phrase list, or SetGrammar) *replaces* the language
model with that list, so everything else a caller says comes out as [unk] -- keyword spotting,
not free speech; it also works only with dynamic-graph models (the small Chinese one) and only
for words already in the model's lexicon. There is no call that adds words or raises their
weight while keeping the full vocabulary (alphacep/vosk-api issues 725, 878, 1537: not possible,
recompile the model). The real way is offline: rebuild the small model's language-model graph
(Gr.fst) from domain text, or the large model's LM and dictionary, with Kaldi and OpenGrm, as
Vosk's adaptation guide describes. SetMaxAlternatives (n-best) could feed a rescoring toward
playbook terms, but the matcher's folded-pinyin comparison already absorbs the homophone errors
that would fix, and it cannot be measured here without a Chinese model.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from asr.engine import ModelNotFoundError, RecognizerStream, SpeechEngine
from asr.events import DecodeDelayed, EndOfSpeech, FinalTranscript, InterimTranscript, SpeechEvent, Word
from asr.models import VOSK_INSTALL_HINT, require_model
from asr.scheduler import DecodeJob, DecodeScheduler, Priority
from asr.vad import VALID_RATES, SpeechDetector


class VoskEngine(SpeechEngine):
    name = "vosk"
    _pool: ThreadPoolExecutor           # never None: __init__ starts it (_start_decode_pool)

    def __init__(self, model_dir: Path | str, decode_threads: int = 2, *,
                 endpoint_silence_ms: int = 800) -> None:
        import vosk  # imported here so that `import asr` stays cheap

        self.model_dir = Path(model_dir)
        require_model("vosk", self.model_dir)
        vosk.SetLogLevel(-1)  # Kaldi logs every model file it reads to stderr otherwise
        started = time.perf_counter()
        try:
            self._model = vosk.Model(str(self.model_dir))
        except Exception as exc:  # libvosk only says "Failed to create a model"
            raise ModelNotFoundError(f"Vosk could not load the model in {self.model_dir} ({exc}); "
                                     f"the files may be damaged. {VOSK_INSTALL_HINT}") from exc
        self.load_seconds = time.perf_counter() - started
        self.endpoint_silence_ms = endpoint_silence_ms
        self._vosk = vosk
        pool = self._start_decode_pool(decode_threads)
        # every decode step goes through the scheduler: customers' legs before agents', so
        # beyond what the box decodes in real time the customers' cards stay in time
        self.scheduler = DecodeScheduler(pool, decode_threads, self.meter, name=self.name)

    def admit(self) -> bool:
        return self.scheduler.admit()

    def open_stream(self, sample_rate: int, label: str = "") -> VoskStream:
        self._ensure_open()
        if not 8000 <= sample_rate <= 48000:
            raise ValueError(f"sample rate must be 8000..48000 Hz, got {sample_rate}")
        recognizer = self._vosk.KaldiRecognizer(self._model, float(sample_rate))
        recognizer.SetWords(True)
        if hasattr(recognizer, "SetPartialWords"):  # vosk >= 0.3.42
            recognizer.SetPartialWords(True)
        stream = VoskStream(recognizer, sample_rate, self.scheduler, self.endpoint_silence_ms)
        stream.label = label  # for logs
        return stream

    def close(self) -> None:
        super().close()
        self._model = None  # freed once the last recogniser using it is gone


class VoskStream(RecognizerStream):
    """One recogniser for one audio stream.

    A KaldiRecognizer is not thread-safe and its output depends on the order of the audio,
    so every call into it is serialised by an asyncio.Lock (FIFO): two overlapping feed()
    calls on the same stream run one after the other in the pool, in call order, while
    other streams keep decoding on the other pool threads. The lock is an asyncio one so
    that waiting for it never blocks the event loop.

    Each decode step is a job on the engine's DecodeScheduler: a streaming decoder must
    decode every frame (nothing can be shed), but a live customer leg (listen()) goes before
    an agent leg, and file analysis (no listen()) after both.
    """

    label = ""  # names the stream in logs, e.g. "customer"

    def __init__(self, recognizer, sample_rate: int, scheduler: DecodeScheduler,
                 endpoint_silence_ms: int = 800) -> None:
        self.sample_rate = sample_rate
        self._recognizer = recognizer
        self._scheduler = scheduler
        self._priority = Priority.BATCH
        self._live = False
        # VAD state is only touched inside the (serialised) decode calls in the pool.
        self._vad = SpeechDetector(sample_rate, frame_ms=10) if sample_rate in VALID_RATES else None
        self._vad_pending = b""
        self._trailing_silence = 0    # samples of non-speech since the last speech frame
        self._endpoint_samples = endpoint_silence_ms * sample_rate // 1000
        self._lock = asyncio.Lock()
        self._odd_byte = b""          # half a sample left over from a chunk of odd length
        self._samples = 0             # samples fed so far: the stream clock
        self._utterance = 0
        self._utterance_start = 0.0   # fallback start when the engine gives no word times
        self._last_partial = ""

    def listen(self, deliver: Callable[[list[SpeechEvent]], None], *, admitted: bool = True) -> None:
        """Live: decode at the leg's priority. Vosk's events still come from feed()."""
        self._live = True
        if not admitted:
            self._priority = Priority.OVERFLOW
        else:
            self._priority = Priority.AGENT_FINAL if self.label == "agent" else Priority.CUSTOMER_FINAL

    @property
    def position(self) -> float:
        """Seconds of audio fed so far."""
        return self._samples / self.sample_rate

    async def feed(self, pcm: bytes) -> list[SpeechEvent]:
        pcm = self._odd_byte + bytes(pcm)
        if len(pcm) % 2:
            pcm, self._odd_byte = pcm[:-1], pcm[-1:]
        else:
            self._odd_byte = b""
        if not pcm:
            return []
        seconds = len(pcm) / 2 / self.sample_rate
        async with self._lock:
            args = (self._live_recognizer(), pcm, bool(self._last_partial))
            job = DecodeJob(self._priority, lambda: args, self._decode, seconds)
            is_final, payload = await self._scheduler.submit(job)
            self._samples += len(pcm) // 2
            result = json.loads(payload)
            if not is_final:
                return self._interim_events(result)
            events = self._final_events(result)
            if self._live and events and job.waited > self._scheduler.behind_after:
                events.insert(0, DecodeDelayed(self._utterance - 1, round(job.waited, 2)))
            return events

    async def finish(self) -> list[SpeechEvent]:
        """Flush the utterance in progress. The stream stays usable: later audio continues
        the same clock and starts a new utterance."""
        async with self._lock:
            if self._recognizer is None:
                return []
            recognizer = self._recognizer
            payload = await self._scheduler.submit(DecodeJob(self._priority, lambda: (recognizer,),
                                                             _final_result))
            return self._final_events(json.loads(payload))

    def close(self) -> None:
        # A decode already running in the pool holds its own reference to the recogniser,
        # so dropping ours here never frees it under that thread's feet.
        self._recognizer = None

    def _decode(self, recognizer, pcm: bytes, utterance_open: bool) -> tuple[bool, str]:
        """Runs in the pool: one decode step and its result in a single hop."""
        if recognizer.AcceptWaveform(pcm):
            self._count_silence(pcm)
            return True, recognizer.Result()
        if self._count_silence(pcm) >= self._endpoint_samples and utterance_open:
            return True, recognizer.FinalResult()
        return False, recognizer.PartialResult()

    def _count_silence(self, pcm: bytes) -> int:
        """Trailing non-speech in samples, updated with `pcm` (0 without a usable VAD)."""
        if self._vad is None:
            return 0
        data = self._vad_pending + pcm
        size = self._vad.frame_bytes
        whole = len(data) - len(data) % size
        for offset in range(0, whole, size):
            if self._vad.is_speech(data[offset:offset + size]):
                self._trailing_silence = 0
            else:
                self._trailing_silence += self._vad.frame_samples
        self._vad_pending = data[whole:]
        return self._trailing_silence

    def _live_recognizer(self):
        if self._recognizer is None:
            raise RuntimeError("stream is closed")
        return self._recognizer

    def _interim_events(self, result: dict) -> list[SpeechEvent]:
        text = result.get("partial", "")
        if text == self._last_partial:
            return []
        self._last_partial = text
        if not text:
            return []
        words = result.get("partial_result") or []
        start = float(words[0]["start"]) if words else self._utterance_start
        return [InterimTranscript(self._utterance, text, start, self.position)]

    def _final_events(self, result: dict) -> list[SpeechEvent]:
        text = result.get("text", "")
        had_interim = bool(self._last_partial)
        self._last_partial = ""
        if not text and not had_interim:
            # Vosk also ends "utterances" of pure silence or noise: nothing to report.
            self._utterance_start = self.position
            return []
        words = tuple(Word(w["word"], float(w["start"]), float(w["end"]), float(w.get("conf", 1.0)))
                      for w in result.get("result", ()))
        start = words[0].start if words else self._utterance_start
        end = words[-1].end if words else self.position
        events: list[SpeechEvent] = [FinalTranscript(self._utterance, text, start, end, words),
                                     EndOfSpeech(self._utterance, self.position)]
        self._utterance += 1
        self._utterance_start = self.position
        return events


def _final_result(recognizer) -> str:
    return recognizer.FinalResult()
