"""Conversation analytics against known truth: prints each measure's error.

    python benchmarks/bench_conversation.py [--no-tts] [--long-minutes 60]

1. The mixed complaint call of tests/conversation_calls.py (TTS customer, real Mandarin
   agent, known talk, talk-over, silences): talk time per leg, talk-over and silence edges,
   who cut in, speaking rate.
2. Pitch on harmonic tones of known F0; pitch and loudness of real voices played 1.15x
   faster and 4 dB louder (the change is known exactly).
3. Agitation: the shared TTS sentences, calm vs the fast-high rendering, after a calm
   baseline; the same for the real voices (plain vs 1.15x/+4 dB, each after its own
   baseline); with the TTS voice available (callassist.testcalls), every customer turn of
   tests/calls.toml rendered calm and agitated. Prints the fraction where agitated scores
   higher.
4. Sentiment on the labelled corpus (prompts/corpus/blind.tsv): share of customer lines
   with a complaint label scored negative, and the spread over lines without one.
5. Cost: analyse_call per minute of audio; snapshot() of a live tracker on a long call.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402

import conversation_calls as calls  # noqa: E402
from callassist.conversation import ConversationTracker, analyse_call, yin_pitch  # noqa: E402
from callassist.sentiment import sentiment, spoken_chars  # noqa: E402


def _edges(found: list[dict], truth: list[dict]) -> list[float]:
    errors = []
    for t in truth:
        match = [f for f in found if f["start"] < t["end"] and t["start"] < f["end"]]
        if match:
            errors += [abs(match[0]["start"] - t["start"]), abs(match[0]["end"] - t["end"])]
    return errors


def conversation() -> None:
    call = calls.complaint_call()
    started = time.perf_counter()
    stats = analyse_call(call.legs, call.lines).to_dict()
    took = time.perf_counter() - started
    print(f"1. mixed call, {call.duration:.1f} s ({len(call.lines)} clips)")
    for speaker in ("customer", "agent"):
        measured, truth = stats["legs"][speaker]["talk_seconds"], call.talk_seconds(speaker)
        chars = sum(spoken_chars(x["text"]) for x in call.lines if x["speaker"] == speaker)
        rate_truth = chars / truth * 60
        rate = stats["legs"][speaker]["speaking_rate"]
        print(f"   {speaker:8} talk {measured:6.2f} s, truth {truth:6.2f} s, error {measured - truth:+.2f} s;"
              f" rate {rate:.0f} chars/min, truth {rate_truth:.0f} ({(rate / rate_truth - 1) * 100:+.1f} %)")
    truth = [o for o in call.overlaps() if o["end"] - o["start"] >= 0.5]
    right = sum(1 for o in truth for f in stats["talk_over"]
                if f["start"] < o["end"] and o["start"] < f["end"] and f["by"] == o["by"])
    errors = _edges(stats["talk_over"], truth)
    print(f"   talk-over: {len(stats['talk_over'])} found, {len(truth)} true (>= 0.5 s), {right} with the right"
          f" `by`; edge error mean {statistics.mean(errors):.3f} s, max {max(errors):.3f} s")
    errors = _edges(stats["silences"], call.silences(5.0))
    print(f"   silences: {len(stats['silences'])} found, {len(call.silences(5.0))} true; edge error mean"
          f" {statistics.mean(errors):.3f} s, max {max(errors):.3f} s")
    print(f"   analyse_call: {took:.2f} s for {call.duration:.0f} s of stereo audio")


def pitch_and_loudness() -> None:
    t = np.arange(8000) / 16000
    errors = []
    for f0 in (80, 110, 150, 200, 260, 330, 390):
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        windows = np.lib.stride_tricks.sliding_window_view(tone, 640)[::160]
        errors.append(abs(np.median(yin_pitch(windows)) / f0 - 1) * 100)
    print(f"2. YIN on tones 80-390 Hz: error max {max(errors):.3f} %")
    ratio_errors, db_errors = [], []
    for key in calls.CLEAN_SAMPLES:
        clip = calls.clip(f"real/{key}")
        plain = analyse_call(calls.mix([("customer", 0.5, clip)]).legs).legs["customer"]
        fast = analyse_call(calls.mix([("customer", 0.5, calls.sped_up(clip))]).legs).legs["customer"]
        ratio_errors.append(12 * np.log2(fast.pitch_hz / plain.pitch_hz / 1.15))
        db_errors.append(fast.loudness_db - plain.loudness_db - 4.0)
        print(f"   real/{key}: F0 {plain.pitch_hz:6.1f} -> {fast.pitch_hz:6.1f} Hz (x{fast.pitch_hz / plain.pitch_hz:.3f},"
              f" truth x1.150), loudness {fast.loudness_db - plain.loudness_db:+.2f} dB (truth +4.00)")
    print(f"   pitch change error: mean |{np.mean(np.abs(ratio_errors)):.3f}| semitones, max"
          f" {np.max(np.abs(ratio_errors)):.3f}; loudness change error mean |{np.mean(np.abs(db_errors)):.2f}| dB,"
          f" max {np.max(np.abs(db_errors)):.2f} dB")


def _pairs_after_baseline(calm: list[calls.Clip], agitated: list[calls.Clip]) -> list[tuple[float, float]]:
    """One leg: the calm clips (repeated up to 20 s of talk: the baseline), then each calm
    and agitated pair; the agitation of each pair's two utterances."""
    plan, t, talk = [], 0.5, 0.0
    while talk < 20.0:
        for c in calm:
            plan.append(("customer", t, c))
            t += c.seconds + 0.8
            talk += c.talk_seconds
    first = len(plan)
    for c, a in zip(calm, agitated):
        for clip in (a, c):
            plan.append(("customer", t, clip))
            t += clip.seconds + 0.8
    call = calls.mix(plan)
    points = analyse_call(call.legs, call.lines).to_dict()["legs"]["customer"]["agitation"]
    values = [p["value"] for p in points][first:]
    return list(zip(values[1::2], values[0::2]))       # (calm, agitated)


def _report(name: str, pairs: list[tuple[float, float]]) -> None:
    higher = sum(a > c for c, a in pairs)
    print(f"   {name}: agitated higher in {higher}/{len(pairs)} ({higher / len(pairs):.0%}); mean calm"
          f" {statistics.mean(c for c, _ in pairs):.3f}, agitated {statistics.mean(a for _, a in pairs):.3f}")


def agitation(use_tts: bool) -> None:
    print("3. agitation, agitated vs calm rendering of the same sentence")
    _report("shared TTS sentences (fast-high vs default)",
            _pairs_after_baseline([calls.clip(f"calm/s{i}") for i in range(1, 6)],
                                  [calls.clip(f"agitated/s{i}") for i in range(1, 6)]))
    pairs = []
    for key in calls.CLEAN_SAMPLES:
        clip = calls.clip(f"real/{key}")
        pairs += _pairs_after_baseline([clip], [calls.sped_up(clip)])
    _report("real voices (x1.15, +4 dB vs plain, own baseline)", pairs)
    if not use_tts:
        return
    try:
        from callassist.testcalls import load_calls, synthesize
        texts = list(dict.fromkeys(t.text for c in load_calls() for t in c.turns if t.speaker == "customer"))
        calm = [calls._cut(f"tts/{i}", synthesize(x), x) for i, x in enumerate(texts)]
        agitated = [calls._cut(f"tts!/{i}", synthesize(x, agitated=True), x) for i, x in enumerate(texts)]
    except Exception as exc:                 # the voice or its front end is missing
        print(f"   tests/calls.toml customer turns: skipped ({exc})")
        return
    _report(f"tests/calls.toml customer turns ({len(texts)} sentences, TTS)", _pairs_after_baseline(calm, agitated))


def sentiment_on_corpus() -> None:
    path = REPO / "prompts" / "corpus" / "blind.tsv"
    labelled, plain = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if line.startswith("#") or len(parts) != 3 or parts[1] != "customer":
            continue
        (plain if parts[0] == "-" else labelled).append(sentiment(parts[2]))
    print(f"4. sentiment on {path.name}: complaint-labelled customer lines scored < -0.1:"
          f" {sum(v < -0.1 for v in labelled) / len(labelled):.0%} of {len(labelled)} (mean {statistics.mean(labelled):+.2f});"
          f" unlabelled customer lines: < -0.1 {sum(v < -0.1 for v in plain) / len(plain):.0%},"
          f" > 0.1 {sum(v > 0.1 for v in plain) / len(plain):.0%} of {len(plain)} (mean {statistics.mean(plain):+.2f})")


def cost(minutes: float) -> None:
    call = calls.complaint_call()
    repeat = int(np.ceil(minutes * 60 / call.duration))
    legs = {s: np.tile(x, repeat) for s, x in call.legs.items()}
    tracker = ConversationTracker()
    started = time.perf_counter()
    step = 16000                                   # 1 s chunks
    for pos in range(0, len(legs["customer"]), step):
        for speaker, x in legs.items():
            tracker.feed(speaker, x[pos:pos + step].tobytes())
    fed = time.perf_counter() - started
    for n in range(repeat):
        for line in call.lines:
            tracker.add_line({**line, "start": line["start"] + n * call.duration, "end": line["end"] + n * call.duration})
    took = []
    for _ in range(5):
        started = time.perf_counter()
        tracker.snapshot()
        took.append(time.perf_counter() - started)
    audio = len(legs["customer"]) / 16000
    print(f"5. cost: feeding {audio / 60:.0f} min of two legs took {fed:.1f} s ({fed / audio * 100:.2f} % of real time);"
          f" snapshot() at the end: median {statistics.median(took) * 1000:.0f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-tts", action="store_true", help="skip the sentences rendered by the TTS voice")
    parser.add_argument("--long-minutes", type=float, default=60.0)
    args = parser.parse_args()
    if not calls.available():
        print("needs ../shared/audio")
        return 2
    conversation()
    pitch_and_loudness()
    agitation(not args.no_tts)
    sentiment_on_corpus()
    cost(args.long_minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
