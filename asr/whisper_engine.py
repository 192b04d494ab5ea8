"""Segment-based recognition with faster-whisper (Whisper base, CTranslate2, CPU).

Whisper is not a streaming model: it transcribes a whole segment at once, and every call
costs one encoder pass over a 30 s window however short the audio (about 1 s of one core for
base/int8 here, twice that with word alignment). So a stream buffers audio, finds the end of
each utterance with the webrtcvad segmenter (asr/vad.py), and transcribes that one segment:
one FinalTranscript plus EndOfSpeech per utterance. Live streams (listen()) also decode the
growing utterance at a bounded cadence for InterimTranscripts. Every decode is a job on the
engine's DecodeScheduler (asr/scheduler.py): customers' finals first, interims shed first,
post-call work last, and a decoder that falls behind says so.

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
import dataclasses
import inspect
import math
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr.biasing import HOTWORD_TOKENS, fit_to_budget, hotword_string, whisper_token_counter
from asr.engine import ModelNotFoundError, RecognizerStream, SpeechEngine
from asr.events import DecodeDelayed, EndOfSpeech, FinalTranscript, InterimTranscript, SpeechEvent, Word
from asr.models import WHISPER_INSTALL_HINT, require_model
from asr.scheduler import DecodeJob, DecodeScheduler, Priority
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
# A later segment of one utterance that is only one of these is Whisper filling the silence
# after the sentence, not speech (82 of 171 live lines on a real Asterisk ended in one).
STRAY_SEGMENTS = TRAILING_HALLUCINATIONS + ("您好", "你好", "谢谢", "好的")
_PUNCTUATION = " ，,。.！!？?、…﹐"
_SENTENCE_END = "。！？!?"
MAX_COMPRESSION_RATIO = 2.4   # above: repeated text, a decoding loop
MAX_NEW_TOKENS = 300          # hard cap per segment (Whisper's context is 448 tokens)
TAIL_NO_SPEECH = 0.5          # a later window above this no-speech probability ...
TAIL_WORD_PROBABILITY = 0.4   # ... whose words average below this is dropped (_is_tail_window)
INTERIM_FIRST_S = 0.6         # live: the first interim decode once an utterance has this much audio
INTERIM_EVERY_S = 0.5         # ... then at most one per this much new audio, one at a time per stream
# Hotwords only for this much audio or more: on shorter audio (a 0.6 s first interim, a short
# 好的) Whisper echoes them as speech (赔一百万 双倍返还, 营业员 measured on live interims).
MIN_BIASED_SECONDS = 1.0
SHORT_WINDOW_MARGIN = 100     # live: mel frames (10 ms) encoded past the audio's end (see _ShortWindow)
SHORT_WINDOW_MIN = 300


def collapse_repeat(text: str) -> str:
    """'换一首歌 换一首歌' -> '换一首歌': a short window decode can say the sentence twice."""
    core = "".join(ch for ch in text if ch not in _PUNCTUATION)
    for times in (3, 2):
        unit = core[:len(core) // times]
        if len(unit) >= 2 and unit * times == core:
            seen = 0
            for cut, ch in enumerate(text):          # where the first copy ends in `text`
                seen += ch not in _PUNCTUATION
                if seen == len(unit):
                    return text[:cut + 1]
    return text


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
    live_is_exact = False

    def __init__(self, model_dir: Path | str, compute_type: str = "int8", decode_threads: int = 2,
                 language: str = "zh", beam_size: int = 5, *, initial_prompt: str = DEFAULT_PROMPT,
                 simplified: bool = True, vad_aggressiveness: int = 2, end_silence_ms: int = 600,
                 max_segment_s: float = 25.0, biasing_terms: Sequence[str] = (),
                 hotword_tokens: int = HOTWORD_TOKENS) -> None:
        from faster_whisper import WhisperModel  # heavy import (ctranslate2, av): only when used

        self.model_dir = Path(model_dir)
        require_model("whisper", self.model_dir)
        pool = self._start_decode_pool(decode_threads)   # before the model: a bad count fails fast
        self.scheduler = DecodeScheduler(pool, decode_threads, self.meter, name=self.name)
        started = time.perf_counter()
        try:
            # cpu_threads=1: each transcription uses one core; num_workers lets `decode_threads`
            # transcriptions (one per pool thread) run at the same time.
            self._model = WhisperModel(str(self.model_dir), device="cpu", compute_type=compute_type,
                                       cpu_threads=1, num_workers=decode_threads)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelNotFoundError(f"faster-whisper could not load {self.model_dir} ({exc}). "
                                     f"{WHISPER_INSTALL_HINT}") from exc
        self._live_model = _ShortWindow.sharing(self._model)
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

    def admit(self) -> bool:
        return self.scheduler.admit()

    def transcribe_options(self, seconds: float, beam_size: int | None = None,
                           word_times: bool = True, biased: bool = True) -> dict[str, Any]:
        """The keyword arguments of faster-whisper's `transcribe` for `seconds` of audio."""
        options: dict[str, Any] = dict(
            language=self.language, beam_size=beam_size or self.beam_size, temperature=0.0,
            word_timestamps=word_times, without_timestamps=True, vad_filter=False,
            condition_on_previous_text=False, initial_prompt=self.initial_prompt,
            max_new_tokens=min(self.max_new_tokens, int(seconds * 12) + 20))
        if self.hotwords and biased and seconds >= MIN_BIASED_SECONDS:
            options["hotwords"] = self.hotwords
        return options

    def open_stream(self, sample_rate: int, label: str = "") -> WhisperStream:
        self._ensure_open()
        stream = WhisperStream(self, sample_rate)
        stream.label = label  # for logs
        return stream

    # -- blocking transcription (pool threads, or the caller's own thread) ------------

    def transcribe_segment(self, audio: np.ndarray, beam_size: int | None = None,
                           live: bool = False, biased: bool = True) -> list[_Piece]:
        """One utterance or a few close ones (float32, 16 kHz, at most ~25 s) -> text; blocking.
        `live`: about 3x faster, for text on screen now: only the audio's own frames are encoded
        (_ShortWindow) and words get no times; the exact pass (file analysis, post-call) encodes
        Whisper's whole 30 s window and aligns every word. `biased` False: no hotwords (interims:
        the growing sentence starts with silence and a syllable or two, where Whisper echoes
        them as speech: 赔一百万 双倍返还 measured on live 0.8 s interims)."""
        model = self._live_model if live else self._model
        segments, _ = model.transcribe(
            audio, **self.transcribe_options(len(audio) / WHISPER_RATE, beam_size, word_times=not live,
                                             biased=biased))
        pieces = self._clean(segments)
        if live:
            pieces = [dataclasses.replace(p, text=collapse_repeat(p.text)) for p in pieces]
        return pieces

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
                    or (index > 0 and (_is_tail_window(seg) or text.strip(_PUNCTUATION) in STRAY_SEGMENTS))
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


@dataclass(eq=False, slots=True)
class _PendingFinal:
    utterance: int
    start: int            # segment bounds, samples into the stream
    end: SpeechEnd
    job: DecodeJob
    future: asyncio.Future


class WhisperStream(RecognizerStream):
    """VAD-segmented recogniser for one audio stream.

    Feed silence too: the end of an utterance is found from `end_silence_ms` of trailing
    non-speech (all-zero frames cost one comparison). Each finished utterance is one decode
    job on the engine's DecodeScheduler. Without listen() (file analysis), feed() waits for
    the utterances it finished, decoded exactly (beam search, word times), at BATCH
    priority. After listen() (live calls) feed() never waits: finals go at the leg's
    priority without word alignment (it doubles a decode: 2.3 s vs 1.2 s of a core measured
    here; the post-call pass gives the archive word times), the growing utterance gets an
    interim decode (greedy) once it holds INTERIM_FIRST_S of audio and then at most every
    INTERIM_EVERY_S, and results reach the listener as they are decoded, in utterance order.
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
        self._utterance = 0         # index the open (or next) utterance gets
        self._closed = False
        self._pending: deque[_PendingFinal] = deque()   # finals submitted, not handed out yet
        self._interim_shown: set[int] = set()
        self._error: BaseException | None = None
        # live mode (listen): where results go and at which priorities
        self._deliver: Callable[[list[SpeechEvent]], None] | None = None
        self._final_priority = Priority.BATCH
        self._interim_priority: Priority | None = None
        self._interim_busy = False
        self._next_interim_at = 0   # sample position at which the next interim is due

    def listen(self, deliver: Callable[[list[SpeechEvent]], None], *, admitted: bool = True) -> None:
        customer = self.label != "agent"
        self._deliver = deliver
        if admitted:
            self._final_priority = Priority.CUSTOMER_FINAL if customer else Priority.AGENT_FINAL
            self._interim_priority = Priority.CUSTOMER_INTERIM if customer else Priority.AGENT_INTERIM
        else:
            self._final_priority, self._interim_priority = Priority.OVERFLOW, None

    async def feed(self, pcm: bytes) -> list[SpeechEvent]:
        pcm = self._odd_byte + bytes(pcm)
        if len(pcm) % 2:
            pcm, self._odd_byte = pcm[:-1], pcm[-1:]
        else:
            self._odd_byte = b""
        async with self._lock:
            if self._closed:
                raise RuntimeError("stream is closed")
            self._raise_error()
            if not pcm:
                return []
            self._audio += pcm
            self._handle(self._segmenter.push(pcm))
            self._request_interim()
            self._trim()
            if self._deliver is not None:
                return []
            return await self._drain()

    async def finish(self) -> list[SpeechEvent]:
        """Transcribe the utterance in progress, if any, and wait for every decode still
        pending; their events are returned (not delivered). The stream stays usable."""
        async with self._lock:
            if self._closed:
                return []
            self._handle(self._segmenter.flush())
            self._trim()
            events = await self._drain()
            self._raise_error()
            return events

    def close(self) -> None:
        self._closed = True
        self._audio = bytearray()
        for pending in self._pending:
            pending.future.cancel()
        self._pending.clear()

    # -- finals ---------------------------------------------------------------------------

    def _handle(self, vad_events) -> None:
        for event in vad_events:
            if isinstance(event, SpeechStart):
                self._segment_start = max(event.sample, self._audio_start)
                self._next_interim_at = self._segment_start + int(INTERIM_FIRST_S * self.sample_rate)
            elif isinstance(event, SpeechEnd) and self._segment_start is not None:
                self._submit_final(self._segment_start, event)
                self._segment_start = None

    def _submit_final(self, start: int, end: SpeechEnd) -> None:
        segment = bytes(self._audio[(start - self._audio_start) * 2:(end.sample - self._audio_start) * 2])
        if len(segment) < self.sample_rate // 10 * 2:  # < 100 ms: nothing Whisper can use
            return
        audio = to_whisper_audio(segment, self.sample_rate)
        exact = self._deliver is None
        job = DecodeJob(self._final_priority, prepare=lambda: (audio, None, not exact),
                        decode=self._engine.transcribe_segment,
                        audio_seconds=len(segment) / 2 / self.sample_rate)
        future = self._engine.scheduler.submit(job)
        self._pending.append(_PendingFinal(self._utterance, start, end, job, future))
        self._utterance += 1
        if self._deliver is not None:
            future.add_done_callback(self._deliver_ready)

    async def _drain(self) -> list[SpeechEvent]:
        """Wait for every pending final; their events in order."""
        if self._pending:
            await asyncio.wait([p.future for p in self._pending])
        return self._ready_finals()

    def _deliver_ready(self, _: asyncio.Future | None = None) -> None:
        if self._deliver is not None and (events := self._ready_finals()):
            self._deliver(events)

    def _ready_finals(self) -> list[SpeechEvent]:
        """The events of the finals decoded so far, up to the first one still decoding."""
        events: list[SpeechEvent] = []
        while self._pending and self._pending[0].future.done():
            pending = self._pending.popleft()
            if pending.future.cancelled():
                self._error = self._error or RuntimeError("speech engine closed")
                continue
            if (exc := pending.future.exception()) is not None:
                self._error = self._error or exc
                continue
            events += self._final_events(pending, pending.future.result())
        return events

    def _final_events(self, pending: _PendingFinal, pieces: list[_Piece]) -> list[SpeechEvent]:
        start, end, limit = pending.start, pending.end, pending.end.sample / self.sample_rate
        events: list[SpeechEvent] = []
        if pending.job.waited > self._engine.scheduler.behind_after and self._deliver is not None:
            events.append(DecodeDelayed(pending.utterance, round(pending.job.waited, 2)))
        shown = pending.utterance in self._interim_shown
        self._interim_shown.discard(pending.utterance)
        if not pieces:
            if shown:    # the interim text on screen was noise: replace it with nothing
                events.append(FinalTranscript(pending.utterance, "", start / self.sample_rate, limit))
            return events
        offset = start / self.sample_rate
        words = tuple(Word(w.text, min(offset + w.start, limit), min(offset + w.end, limit), w.confidence)
                      for p in pieces for w in p.words)
        text = "".join(p.text for p in pieces)
        first = words[0].start if words else offset + pieces[0].start
        last = words[-1].end if words else min(offset + pieces[-1].end, limit)
        return events + [FinalTranscript(pending.utterance, text, first, last, words),
                         EndOfSpeech(pending.utterance, end.detected_at / self.sample_rate)]

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    # -- interims (live mode) ---------------------------------------------------------------

    def _request_interim(self) -> None:
        """Queue an interim decode of the open utterance when one is due and none is in flight
        (the scheduler also replaces a waiting one and sheds one whose utterance ended)."""
        if (self._interim_priority is None or self._segment_start is None or self._interim_busy
                or self._audio_start + len(self._audio) // 2 < self._next_interim_at):
            return
        utterance, segment_start = self._utterance, self._segment_start

        decoded_to: list[int] = []      # how far the snapshot reached

        def snapshot() -> tuple[Any, ...] | None:
            if self._segment_start != segment_start or self._closed:
                return None              # the utterance ended while this waited: its final is coming
            position = self._audio_start + len(self._audio) // 2
            self._next_interim_at = position + int(INTERIM_EVERY_S * self.sample_rate)
            decoded_to.append(position)
            segment = bytes(self._audio[(segment_start - self._audio_start) * 2:])
            return (to_whisper_audio(segment, self.sample_rate), 1, True, False)

        self._interim_busy = True
        job = DecodeJob(self._interim_priority, prepare=snapshot, decode=self._engine.transcribe_segment,
                        audio_seconds=(self._audio_start + len(self._audio) // 2 - segment_start)
                        / self.sample_rate, key=self)
        future = self._engine.scheduler.submit(job)
        future.add_done_callback(lambda done: self._interim_done(done, utterance, segment_start, decoded_to))

    def _interim_done(self, done: asyncio.Future, utterance: int, segment_start: int,
                      decoded_to: list[int]) -> None:
        self._interim_busy = False
        if self._closed or done.cancelled() or done.exception() is not None:
            return                       # shed, or failed: the final will tell
        pieces: list[_Piece] = done.result()
        waiting_from = self._pending[0].utterance if self._pending else self._utterance
        text = "".join(p.text for p in pieces)
        if text and utterance >= waiting_from and self._deliver is not None:
            self._interim_shown.add(utterance)
            self._deliver([InterimTranscript(utterance, text, segment_start / self.sample_rate,
                                             decoded_to[0] / self.sample_rate)])
        self._request_interim()

    def _trim(self) -> None:
        """Keep the open segment, or (between segments) just enough history for pre-roll."""
        position = self._audio_start + len(self._audio) // 2
        keep_from = (self._segment_start if self._segment_start is not None
                     else position - self._segmenter.history_samples)
        drop = max(0, keep_from - self._audio_start)
        if drop:
            del self._audio[:drop * 2]
            self._audio_start += drop


class _ShortWindow:
    """faster-whisper's model with one change: its encoder sees only the audio's own mel frames
    (plus SHORT_WINDOW_MARGIN) instead of Whisper's 30 s window padded with zeros.

    CTranslate2's Whisper encoder takes any length; the 30 s window is what makes a decode of
    a 2 s sentence cost as much as a 30 s one (encoder 1.4 s -> 0.1 s for 10 s of frames here).
    Measured on shared/audio (benchmarks/bench_asr.py --window): about 3x faster per live
    decode for a character error rate of 19.3 % vs 18.3 % on the real Mandarin samples; the
    post-call pass still uses the full window. Shares the loaded model (no second copy)."""

    @staticmethod
    def sharing(model):
        from faster_whisper import WhisperModel

        class ShortWindowModel(WhisperModel):
            def encode(self, features: np.ndarray):
                if features.ndim == 2:
                    features = features[None]
                # pad_or_trim filled the window with exact zeros; real log-mel frames never are
                voiced = np.flatnonzero(np.any(features != 0, axis=(0, 1)))
                frames = int(voiced[-1]) + 1 if voiced.size else 0
                keep = min(features.shape[-1], max(SHORT_WINDOW_MIN,
                                                   math.ceil((frames + SHORT_WINDOW_MARGIN) / 100) * 100))
                return super().encode(np.ascontiguousarray(features[..., :keep]))

        short = ShortWindowModel.__new__(ShortWindowModel)
        short.__dict__.update(model.__dict__)     # same CTranslate2 model, tokenizer, extractor
        return short


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
