"""Speech engine benchmark: load time, memory, speed and (Whisper) accuracy.

    python benchmarks/bench_asr.py [--engine vosk|whisper|all] [--threads 2]

For each engine it prints the model load time, the process RSS growth from loading it,
and the decode speed over shared/audio/mandarin-samples fed as a live stream (20 ms
chunks plus 1 s of trailing silence, one stream at a time, then all streams at once).
Speed is "x real time" = audio seconds / wall seconds (higher is faster); RTF = the inverse.
Whisper's character error rate is computed at 16 kHz and on the 8 kHz telephone-band
copies, for all references and the high-confidence subset, plus the post-call
`transcribe_file` pass. Vosk CER is printed only when a Chinese Vosk model is installed
(the fallback Korean test model measures speed only). Numbers, never pass/fail.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import sys
import time
from pathlib import Path

import psutil
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asr.engine import ModelNotFoundError, SpeechEngine  # noqa: E402
from asr.events import FinalTranscript  # noqa: E402
from asr.models import find_model, find_test_vosk_model  # noqa: E402
from asr.scoring import char_errors  # noqa: E402
from callassist.config import PROJECT_ROOT  # noqa: E402

SAMPLES = PROJECT_ROOT.parent / "shared" / "audio" / "mandarin-samples"


def load_references(name: str) -> dict[str, str]:
    lines = (SAMPLES / name).read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t", 1) for line in lines if line.strip())


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 1e6


async def stream_file(engine: SpeechEngine, path: Path) -> tuple[str, float]:
    data, rate = sf.read(path, dtype="int16")
    pcm = data.tobytes() + bytes(rate * 2)
    stream = engine.open_stream(rate)
    chunk = rate // 50 * 2
    events = []
    for offset in range(0, len(pcm), chunk):
        events += await stream.feed(pcm[offset:offset + chunk])
    events += await stream.finish()
    stream.close()
    text = "".join(e.text for e in events if isinstance(e, FinalTranscript))
    return text, len(pcm) / 2 / rate


async def run_set(engine: SpeechEngine, folder: Path, names: list[str]) -> tuple[dict[str, str], float, float, float]:
    """Sequential streams: (hypotheses, audio seconds, wall seconds, CPU seconds)."""
    hypotheses, audio = {}, 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    for name in names:
        hypotheses[name], seconds = await stream_file(engine, folder / name)
        audio += seconds
    return hypotheses, audio, time.perf_counter() - wall, time.process_time() - cpu


async def run_parallel(engine: SpeechEngine, folder: Path, names: list[str]) -> tuple[float, float]:
    wall = time.perf_counter()
    results = await asyncio.gather(*(stream_file(engine, folder / name) for name in names))
    return sum(seconds for _, seconds in results), time.perf_counter() - wall


def cer_line(label: str, hypotheses: dict[str, str], refs: dict[str, str]) -> str:
    errors = length = 0
    for name, reference in refs.items():
        if name in hypotheses:
            e, n = char_errors(reference, hypotheses[name])
            errors, length = errors + e, length + n
    return f"  CER {label:<28} {errors / max(1, length):6.3f}  ({errors}/{length} chars, {len(refs)} files)"


def speed_line(label: str, audio: float, wall: float, cpu: float | None = None) -> str:
    cpu_part = f", CPU {cpu:6.1f} s (RTF per core {cpu / audio:5.2f})" if cpu is not None else ""
    return (f"  {label:<32} {audio:6.1f} s audio in {wall:6.1f} s wall: "
            f"{audio / wall:5.2f}x real time (RTF {wall / audio:4.2f}){cpu_part}")


async def bench(kind: str, threads: int, compute_type: str) -> None:
    refs_all = load_references("transcripts.tsv")
    refs_high = load_references("transcripts_high_confidence.tsv")
    names = sorted(refs_all)
    label = kind
    try:
        model = find_model(kind)
        chinese = True
    except ModelNotFoundError as exc:
        if kind != "vosk":
            print(f"{kind}: skipped: {exc}")
            return
        model, chinese = find_test_vosk_model(), False
        label = "vosk (Korean test model: speed only, CER meaningless)"

    before = rss_mb()
    started = time.perf_counter()
    if kind == "vosk":
        from asr.vosk_engine import VoskEngine
        engine: SpeechEngine = VoskEngine(model, decode_threads=threads)
    else:
        from asr.whisper_engine import WhisperEngine
        engine = WhisperEngine(model, compute_type=compute_type, decode_threads=threads)
    load = time.perf_counter() - started
    print(f"\n== {label}\n  model {model}\n  load {load:.2f} s, RSS +{rss_mb() - before:.0f} MB "
          f"(process {rss_mb():.0f} MB), decode_threads={threads}")
    try:
        hyp16, audio, wall, cpu = await run_set(engine, SAMPLES, names)
        print(speed_line("16 kHz, one stream at a time", audio, wall, cpu))
        hyp8, audio8, wall8, cpu8 = await run_set(engine, SAMPLES / "8k", names)
        print(speed_line("8 kHz, one stream at a time", audio8, wall8, cpu8))
        par_audio, par_wall = await run_parallel(engine, SAMPLES, names)
        print(speed_line(f"16 kHz, {len(names)} streams at once", par_audio, par_wall))
        print(f"  RSS after decoding: process {rss_mb():.0f} MB")
        if chinese:
            print(cer_line("16 kHz, all references", hyp16, refs_all))
            print(cer_line("16 kHz, high confidence", hyp16, refs_high))
            print(cer_line("8 kHz, all references", hyp8, refs_all))
            print(cer_line("8 kHz, high confidence", hyp8, refs_high))
        if kind == "whisper" and chinese:
            wall, cpu, post, audio = time.perf_counter(), time.process_time(), {}, 0.0
            for name in names:
                data, rate = sf.read(SAMPLES / name, dtype="int16")
                finals = engine.transcribe_file(data, rate)
                post[name] = "".join(f.text for f in finals)
                audio += len(data) / rate
            print(speed_line("transcribe_file (post-call)", audio,
                             time.perf_counter() - wall, time.process_time() - cpu))
            print(cer_line("transcribe_file, all", post, refs_all))
            print(cer_line("transcribe_file, high conf.", post, refs_high))
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["vosk", "whisper", "all"], default="all")
    parser.add_argument("--threads", type=int, default=2, help="decode_threads (default 2)")
    parser.add_argument("--compute-type", default="int8", help="Whisper compute type (default int8)")
    args = parser.parse_args()
    if args.engine == "all":
        # One process per engine, so each RSS figure holds only that engine's model.
        for kind in ("vosk", "whisper"):
            subprocess.run([sys.executable, __file__, "--engine", kind, "--threads", str(args.threads),
                            "--compute-type", args.compute_type], check=False)
        return
    print(f"CPU: {psutil.cpu_count()} logical cores, load average {psutil.getloadavg()[0]:.1f}")
    asyncio.run(bench(args.engine, args.threads, args.compute_type))


if __name__ == "__main__":
    main()
