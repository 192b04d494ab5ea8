"""Segment-based recognition with faster-whisper (Whisper base, CTranslate2, CPU).

Whisper is not a streaming model: it transcribes a whole segment at once, and every call
costs one encoder pass over a 30 s window however short the audio (≈1.5-2 s of one core
for base/int8 here). So a stream buffers audio, finds the end of each utterance with the
webrtcvad segmenter (asr/vad.py), and transcribes that one segment: one FinalTranscript
with word times plus EndOfSpeech per utterance. No InterimTranscript: re-transcribing the
growing buffer every ~2 s would cost a full encoder pass each time, i.e. about one CPU
core per active speaker on top of the final pass; use Vosk when live partials matter.

Each segment is decoded with timestamp tokens off (`without_timestamps=True`): the segment
is one utterance, and with timestamps on, Whisper base tends to "continue" into the
silence padding of its 30 s window with repeated text. Word times still come from the
cross-attention alignment. Output is converted to simplified Chinese (OpenCC t2s): Whisper
often answers in traditional characters.

Contextual biasing: `biasing_terms` (from asr.biasing, derived from the playbook; create_engine
passes them when [asr] biasing is on) go to every transcription, live segments and the post-call
pass alike, as faster-whisper `hotwords`, cut to `hotword_tokens` tokens of the model's own
tokenizer. The prompt (hotwords + initial prompt) and the generated text share Whisper's
448-token context, so a segment's max_new_tokens is capped to what the prompt leaves.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr.biasing import HOTWORD_TOKENS, fit_to_budget, hotword_string, whisper_token_counter
from asr.engine import ModelNotFoundError, RecognizerStream, SpeechEngine
from asr.events import EndOfSpeech, FinalTranscript, SpeechEvent, Word
from asr.models import WHISPER_INSTALL_HINT, require_model
from asr.vad import Segmenter, SpeechEnd, SpeechStart

log = logging.getLogger(__name__)

WHISPER_RATE = 16000
WHISPER_CONTEXT = 448         # tokens of text context: prompt + generated
DEFAULT_PROMPT = "以下是普通话的句子，关于电信投诉。"
# Phrases Whisper produces from noise or silence (subtitle credits from its training data).
HALLUCINATIONS = ("字幕由Amara.org社区提供", "明镜与点点栏目", "请不吝点赞", "订阅 转发 打赏",
                  "小编字幕", "字幕志愿者")
# Words Whisper base glues after a finished sentence when the segment ends in silence
# ("……道歉。作词"). Dropped only as a whole clause after sentence-final punctuation.
TRAILING_HALLUCINATIONS = ("请注意", "作词", "作曲", "作词作曲", "字幕制作", "谢谢观看", "请订阅",
                           "您的", "这边", "请不吝点赞订阅转发打赏支持明镜与点点栏目")
_SENTENCE_END = "。！？!?"
MAX_COMPRESSION_RATIO = 2.4   # above: repeated text, a decoding loop
MAX_NEW_TOKENS = 300          # hard cap per segment (Whisper's context is 448 tokens)
TAIL_NO_SPEECH = 0.5          # a later window above this no-speech probability ...
TAIL_WORD_PROBABILITY = 0.4   # ... whose words average below this is dropped (_is_tail_window)


def drop_trailing_hallucination(text: str) -> str:
    """'你们必须给我书面道歉。作词' -> '你们必须给我书面道歉。'"""
    cut = max(text.rfind(mark) for mark in _SENTENCE_END)
    if 0 < cut < len(text) - 1 and text[cut + 1:].strip(" ，,。") in TRAILING_HALLUCINATIONS:
        return text[:cut + 1]
    return text


@dataclass(frozen=True, slots=True)
class _Piece:
    """A transcribed span, times relative to the audio given to Whisper."""
    text: str
    start: float
    end: float
    words: tuple[Word, ...]


class WhisperEngine(SpeechEngine):
    name = "whisper"

    def __init__(self, model_dir: Path | str, compute_type: str = "int8", decode_threads: int = 2,
                 language: str = "zh", beam_size: int = 5, *, initial_prompt: str = DEFAULT_PROMPT,
                 simplified: bool = True, vad_aggressiveness: int = 2, end_silence_ms: int = 600,
                 max_segment_s: float = 25.0, biasing_terms: Sequence[str] = (),
                 hotword_tokens: int = HOTWORD_TOKENS) -> None:
        from faster_whisper import WhisperModel  # heavy import (ctranslate2, av): only when used

        self.model_dir = Path(model_dir)
        require_model("whisper", self.model_dir)
        self._start_decode_pool(decode_threads)   # before the model: a bad count fails fast
        started = time.perf_counter()
        try:
            # cpu_threads=1: each transcription uses one core; num_workers lets `decode_threads`
            # transcriptions (one per pool thread) run at the same time.
            self._model = WhisperModel(str(self.model_dir), device="cpu", compute_type=compute_type,
                                       cpu_threads=1, num_workers=decode_threads)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelNotFoundError(f"faster-whisper could not load {self.model_dir} ({exc}). "
                                     f"{WHISPER_INSTALL_HINT}") from exc
        self.load_seconds = time.perf_counter() - started
        self.language = language
        self.beam_size = beam_size
        self.initial_prompt = initial_prompt
        self.vad_aggressiveness = vad_aggressiveness
        self.end_silence_ms = end_silence_ms
        self.max_segment_s = max_segment_s
        self._to_simplified = _simplifier() if simplified else (lambda text: text)
        self._set_biasing(biasing_terms, hotword_tokens)

    def _set_biasing(self, terms: Sequence[str], budget: int) -> None:
        count = whisper_token_counter(self._model.hf_tokenizer)
        supported = "hotwords" in inspect.signature(self._model.transcribe).parameters
        if terms and not supported:  # faster-whisper < 1.0
            log.warning("this faster-whisper has no hotwords; transcribing without biasing terms")
        self.biasing_terms: tuple[str, ...] = tuple(fit_to_budget(terms, count, budget)) if supported else ()
        self.hotwords: str | None = hotword_string(self.biasing_terms) or None
        # What faster-whisper's get_prompt builds: <|startofprev|> hotwords initial-prompt, then
        # <|startoftranscript|> <|zh|> <|transcribe|> <|notimestamps|>.
        previous = count(self.hotwords or "") + count(self.initial_prompt or "")
        self.prompt_tokens = (1 + previous if previous else 0) + 4
        self.max_new_tokens = min(MAX_NEW_TOKENS, WHISPER_CONTEXT - self.prompt_tokens)

    def transcribe_options(self, seconds: float, beam_size: int | None = None) -> dict[str, Any]:
        """The keyword arguments of faster-whisper's `transcribe` for `seconds` of audio."""
        options: dict[str, Any] = dict(
            language=self.language, beam_size=beam_size or self.beam_size, temperature=0.0,
            word_timestamps=True, without_timestamps=True, vad_filter=False,
            condition_on_previous_text=False, initial_prompt=self.initial_prompt,
            max_new_tokens=min(self.max_new_tokens, int(seconds * 12) + 20))
        if self.hotwords:
            options["hotwords"] = self.hotwords
        return options

    def open_stream(self, sample_rate: int, label: str = "") -> WhisperStream:
        self._ensure_open()
        stream = WhisperStream(self, sample_rate)
        stream.label = label  # for logs
        return stream

    # -- blocking transcription (pool threads, or the caller's own thread) ------------

    def transcribe_segment(self, audio: np.ndarray, beam_size: int | None = None) -> list[_Piece]:
        """One utterance or a few close ones (float32, 16 kHz, at most ~25 s) -> text; blocking."""
        segments, _ = self._model.transcribe(
            audio, **self.transcribe_options(len(audio) / WHISPER_RATE, beam_size))
        return self._clean(segments)

    def transcribe_file(self, pcm: bytes | np.ndarray, sample_rate: int = WHISPER_RATE) -> list[FinalTranscript]:
        """Whole-recording pass (post-call QA); blocking, about one encoder pass per 25 s of speech.

        `pcm` is 16-bit mono PCM bytes or an int16/float array. Silero VAD (shipped with
        faster-whisper; slower but better than webrtcvad offline) finds the speech; nearby
        utterances are decoded together in windows of up to `max_segment_s`, the way the live
        path decodes one, and split back into one FinalTranscript per utterance by word time.
        (faster-whisper's own long-form mode, timestamps on, was measured here to loop on the
        last fraction of a second of a window for tens of seconds of CPU.)
        """
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        audio = to_whisper_audio(pcm, sample_rate)
        chunks = get_speech_timestamps(audio, VadOptions(
            min_silence_duration_ms=500, speech_pad_ms=200, max_speech_duration_s=self.max_segment_s))
        finals: list[FinalTranscript] = []
        for group in _group_chunks([(c["start"], c["end"]) for c in chunks],
                                   int(self.max_segment_s * WHISPER_RATE), max_gap=3 * WHISPER_RATE):
            first, last = group[0][0], group[-1][1]
            offset = first / WHISPER_RATE
            pieces = self.transcribe_segment(audio[first:last], beam_size=max(self.beam_size, 5))
            words = [Word(w.text, offset + w.start, offset + w.end, w.confidence) for p in pieces for w in p.words]
            if not words:
                finals += [FinalTranscript(len(finals), p.text, offset + p.start, offset + p.end) for p in pieces]
                continue
            # Each word goes to the utterance whose span (extended to mid-gap) holds its midpoint.
            bounds = [(a[1] + b[0]) / 2 / WHISPER_RATE for a, b in zip(group, group[1:])]
            for index in range(len(group)):
                low = bounds[index - 1] if index else float("-inf")
                high = bounds[index] if index < len(bounds) else float("inf")
                mine = tuple(w for w in words if low <= (w.start + w.end) / 2 < high)
                if mine:
                    finals.append(FinalTranscript(len(finals), "".join(w.text for w in mine),
                                                  mine[0].start, mine[-1].end, mine))
        return finals

    async def transcribe_file_async(self, pcm: bytes | np.ndarray,
                                    sample_rate: int = WHISPER_RATE) -> list[FinalTranscript]:
        """transcribe_file in the engine's pool, for callers on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self.transcribe_file, pcm, sample_rate)

    def _clean(self, segments) -> list[_Piece]:
        """Drop decoding loops, noise and known hallucinations; simplify characters."""
        pieces = []
        for index, seg in enumerate(segments):
            text = drop_trailing_hallucination(self._to_simplified(seg.text.strip()))
            if (not text or seg.compression_ratio > MAX_COMPRESSION_RATIO
                    or (seg.no_speech_prob > 0.6 and seg.avg_logprob < -1.0)
                    or (index > 0 and _is_tail_window(seg))
                    or any(h in text for h in HALLUCINATIONS)):
                continue
            words = tuple(Word(self._to_simplified(w.word.strip()), float(w.start), float(w.end),
                               float(w.probability)) for w in (seg.words or ()) if w.word.strip())
            start = words[0].start if words else float(seg.start)
            end = words[-1].end if words else float(seg.end)
            pieces.append(_Piece(text, start, end, words))
        return pieces

    async def _run(self, fn, *args):
        self._ensure_open()
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)


class WhisperStream(RecognizerStream):
    """VAD-segmented recogniser for one audio stream.

    Feed silence too: the end of an utterance is found from `end_silence_ms` of trailing
    non-speech (all-zero frames cost one comparison). The feed() call that completes an
    utterance waits for its transcription; calls are serialised by an asyncio.Lock so the
    audio buffer and the segmenter see chunks in order.
    """

    label = ""  # names the stream in logs, e.g. "customer"

    def __init__(self, engine: WhisperEngine, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._engine = engine
        self._segmenter = Segmenter(sample_rate, aggressiveness=engine.vad_aggressiveness,
                                    end_silence_ms=engine.end_silence_ms,
                                    max_speech_ms=int(engine.max_segment_s * 1000))
        self._lock = asyncio.Lock()
        self._odd_byte = b""
        self._audio = bytearray()   # recent audio: the open segment plus pre-roll history
        self._audio_start = 0       # sample offset of self._audio[0]
        self._segment_start: int | None = None
        self._utterance = 0
        self._closed = False

    async def feed(self, pcm: bytes) -> list[SpeechEvent]:
        pcm = self._odd_byte + bytes(pcm)
        if len(pcm) % 2:
            pcm, self._odd_byte = pcm[:-1], pcm[-1:]
        else:
            self._odd_byte = b""
        with self._engine.meter.pending(len(pcm) / 2 / self.sample_rate):
            async with self._lock:
                if self._closed:
                    raise RuntimeError("stream is closed")
                if not pcm:
                    return []
                self._audio += pcm
                events = await self._handle(self._segmenter.push(pcm))
                self._trim()
                return events

    async def finish(self) -> list[SpeechEvent]:
        """Transcribe the utterance in progress, if any. The stream stays usable."""
        async with self._lock:
            if self._closed:
                return []
            events = await self._handle(self._segmenter.flush())
            self._trim()
            return events

    def close(self) -> None:
        self._closed = True
        self._audio = bytearray()

    async def _handle(self, vad_events) -> list[SpeechEvent]:
        out: list[SpeechEvent] = []
        for event in vad_events:
            if isinstance(event, SpeechStart):
                self._segment_start = max(event.sample, self._audio_start)
            elif isinstance(event, SpeechEnd) and self._segment_start is not None:
                out += await self._transcribe(self._segment_start, event)
                self._segment_start = None
        return out

    async def _transcribe(self, start: int, end: SpeechEnd) -> list[SpeechEvent]:
        segment = bytes(self._audio[(start - self._audio_start) * 2:(end.sample - self._audio_start) * 2])
        if len(segment) < self.sample_rate // 10 * 2:  # < 100 ms: nothing Whisper can use
            return []
        audio = to_whisper_audio(segment, self.sample_rate)
        pieces = await self._engine._run(self._engine.meter.timed, len(segment) / 2 / self.sample_rate,
                                         self._engine.transcribe_segment, audio)
        if not pieces:
            return []
        offset, limit = start / self.sample_rate, end.sample / self.sample_rate
        words = tuple(Word(w.text, min(offset + w.start, limit), min(offset + w.end, limit), w.confidence)
                      for p in pieces for w in p.words)
        text = "".join(p.text for p in pieces)
        first = words[0].start if words else offset + pieces[0].start
        last = words[-1].end if words else min(offset + pieces[-1].end, limit)
        events: list[SpeechEvent] = [FinalTranscript(self._utterance, text, first, last, words),
                                     EndOfSpeech(self._utterance, end.detected_at / self.sample_rate)]
        self._utterance += 1
        return events

    def _trim(self) -> None:
        """Keep the open segment, or (between segments) just enough history for pre-roll."""
        position = self._audio_start + len(self._audio) // 2
        keep_from = (self._segment_start if self._segment_start is not None
                     else position - self._segmenter.history_samples)
        drop = max(0, keep_from - self._audio_start)
        if drop:
            del self._audio[:drop * 2]
            self._audio_start += drop


def _is_tail_window(seg) -> bool:
    """A later segment that decoded only the audio after the last word (faster-whisper moves on
    to the last word's end and decodes the rest as another window): the model calls it silence
    and is unsure of every word. There Whisper writes credits (作词作曲, 作试) and, with hotwords,
    echoes the hint list (赔一百万 双倍返还): measured tail words average p < 0.35, speech > 0.75."""
    words = seg.words or ()
    mean = sum(w.probability for w in words) / len(words) if words else 0.0
    return seg.no_speech_prob > TAIL_NO_SPEECH and mean < TAIL_WORD_PROBABILITY


def _group_chunks(chunks: list[tuple[int, int]], max_span: int, max_gap: int) -> list[list[tuple[int, int]]]:
    """Consecutive speech chunks joined while the group spans at most `max_span` samples
    and no pause inside is longer than `max_gap` (long silences make Whisper invent text)."""
    groups: list[list[tuple[int, int]]] = []
    for chunk in chunks:
        if groups and chunk[1] - groups[-1][0][0] <= max_span and chunk[0] - groups[-1][-1][1] <= max_gap:
            groups[-1].append(chunk)
        else:
            groups.append([chunk])
    return groups


def to_whisper_audio(pcm: bytes | np.ndarray, sample_rate: int) -> np.ndarray:
    """16-bit PCM (bytes or array) or float audio at any rate -> float32 mono at 16 kHz."""
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    elif np.issubdtype(pcm.dtype, np.integer):
        audio = pcm.astype(np.float32) / 32768.0
    else:
        audio = pcm.astype(np.float32, copy=False)
    if sample_rate != WHISPER_RATE:
        import soxr
        audio = soxr.resample(audio, sample_rate, WHISPER_RATE).astype(np.float32, copy=False)
    return audio


def _simplifier():
    import opencc
    converter = opencc.OpenCC("t2s")
    return converter.convert
