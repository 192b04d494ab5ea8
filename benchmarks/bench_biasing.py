"""What contextual biasing (asr.biasing: playbook terms as faster-whisper hotwords) buys.

    python benchmarks/bench_biasing.py [--part cer|recall|noise|all] [--budget N]...
                                       [--prompt default|domain] [--only CALL_ID]... [--bands both|script]
                                       [--threads 1] [--verbose]

Whisper base, each configuration loaded once (off = today's engine without hotwords; one
`biasing` column per --budget, in hotword tokens), and for each:

* cer:    character error rate on ../shared/audio/mandarin-samples (ordinary speech, nothing
          about telecoms: biasing can only hurt there, so this is the hallucination check), fed
          as a live stream (bench_asr.run_set) at 16 kHz and on the 8 kHz telephone-band copies,
          plus how many hypotheses contain a biasing term that their reference lacks; then the
          post-call pass (transcribe_file) over the same files.
* recall: episodes hit / expected and false triggers of analyze on the TTS test calls
          (tests/calls.toml, wideband and telephone band; bench_analyze's rendering and scoring),
          matched by the product's matcher (phrases + intent model) and by the phrases alone with
          pinyin on and off; false triggers on the neutral calls separately; and the CER of each
          leg's transcript against its script, with the playbook phrases it writes verbatim.
* noise:  what each configuration writes for 3 s of silence, of faint and of loud white noise
          given straight to transcribe_segment (the VAD normally keeps these away from Whisper).

Numbers, never pass/fail. Decoding uses `--threads` pool threads (default 1: the machine is shared).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_analyze  # noqa: E402
from bench_asr import SAMPLES, cer_line, load_references, run_set  # noqa: E402

from asr.biasing import HOTWORD_TOKENS, domain_prompt, playbook_terms  # noqa: E402
from asr.models import find_model  # noqa: E402
from asr.scoring import char_errors, normalise_for_cer  # noqa: E402
from asr.whisper_engine import DEFAULT_PROMPT, WHISPER_RATE, WhisperEngine  # noqa: E402
from prompts.matcher import Matcher  # noqa: E402
from prompts.playbook import load_playbook  # noqa: E402


@dataclass
class Setup:
    label: str
    budget: int            # hotword tokens; 0 = off
    prompt: str            # initial_prompt


def open_engine(setup: Setup, model: Path, terms: list[str], threads: int) -> WhisperEngine:
    return WhisperEngine(model, compute_type="int8", decode_threads=threads, initial_prompt=setup.prompt,
                         biasing_terms=terms if setup.budget else (), hotword_tokens=setup.budget or 1)


# --- CER on real ordinary speech ------------------------------------------------------------

def bench_cer(engine: WhisperEngine, terms: list[str], verbose: bool) -> dict[str, dict[str, str]]:
    refs_all = load_references("transcripts.tsv")
    refs_high = load_references("transcripts_high_confidence.tsv")
    names = sorted(refs_all)
    out = {}
    for rate, folder in (("16k", SAMPLES), ("8k", SAMPLES / "8k")):
        hyps, audio, wall, cpu = asyncio.run(run_set(engine, folder, names))
        out[rate] = hyps
        print(cer_line(f"{rate}, all references", hyps, refs_all))
        print(cer_line(f"{rate}, high confidence", hyps, refs_high))
        inserted = [(name, term) for name, hyp in hyps.items() for term in terms
                    if term in normalise_for_cer(hyp) and term not in normalise_for_cer(refs_all[name])]
        print(f"  {rate}: biasing terms written where the reference has none: {len(inserted)}"
              + (f" ({', '.join(f'{n[:2]}:{t}' for n, t in inserted)})" if inserted else "")
              + f"   [{audio:.0f} s audio, {cpu:.0f} s cpu]")
        if verbose:
            for name in names:
                print(f"      {name[:2]} {hyps[name]}")
        post = {}
        for name in names:   # the post-call pass (Silero VAD windows) over the same files
            data, sample_rate = sf.read(folder / name, dtype="int16")
            post[name] = "".join(f.text for f in engine.transcribe_file(data, sample_rate))
        print(cer_line(f"{rate}, transcribe_file, all", post, refs_all))
        if verbose:
            for name in names:
                if post[name] != hyps[name]:
                    print(f"      {name[:2]} file pass: {post[name]}")
    return out


# --- trigger recall on the TTS calls ----------------------------------------------------------

def bench_recall(engine: WhisperEngine, label: str, calls, playbook, verbose: bool) -> list[bench_analyze.Run]:
    matchers = {"pinyin": Matcher(playbook, use_pinyin=True), "chars": Matcher(playbook, use_pinyin=False)}
    if hasattr(bench_analyze, "IntentModel"):   # the product's matcher: phrases + intent model
        matchers = {"intent": Matcher(playbook, intent=bench_analyze.IntentModel.load()), **matchers}
    runs = bench_analyze.run_engine(label, engine, calls, playbook, matchers, verbose)
    names = {"intent": "product (phrases+intent)", "pinyin": "phrases, pinyin ON ", "chars": "phrases, pinyin OFF"}
    for mode in matchers:
        rows = [("wideband", [r for r in runs if not r.call.telephone]),
                ("telephone band", [r for r in runs if r.call.telephone]),
                ("TOTAL", runs)]
        cells = [f"{name} {bench_analyze.tally(r.scores[mode] for r in subset).cell()}" for name, subset in rows]
        neutral = bench_analyze.tally(r.scores[mode] for r in runs if r.call.script.neutral).false
        print(f"  recall, {names[mode]}: " + " | ".join(cells)
              + f" | false on neutral calls {neutral}")
        missed = [e.first for r in runs for e in r.scores[mode].misses]
        if missed:
            print("      misses: " + ", ".join(f"{e.call_id}#{e.turn}{'/tel' if e.telephone else ''}:{e.category}"
                                           for e in missed))
        false = [(r.call.script.id, t) for r in runs for t in r.scores[mode].false]
        if false:
            print("      false:  " + ", ".join(f"{cid}:{t['category']}({t['text']}~{t['phrase']})" for cid, t in false))
    print_transcript_accuracy(runs, playbook)
    audio = sum(r.call.duration for r in runs)
    print(f"  analyze real-time factor: cpu {sum(r.cpu for r in runs) / audio:.3f} per second of stereo audio")
    return runs


def print_transcript_accuracy(runs: list[bench_analyze.Run], playbook) -> None:
    """CER of each call leg's whole transcript against its script, and how many playbook phrases
    of the script (longest first, not overlapping) the transcript has verbatim."""
    phrases = sorted({p for c in playbook.categories for p in c.phrases}, key=len, reverse=True)
    for band, telephone in (("wideband", False), ("telephone band", True)):
        errors = length = said = written = 0
        for run in (r for r in runs if r.call.telephone == telephone):
            for speaker in ("customer", "agent"):
                reference = "".join(t.text for t in run.call.turns if t.speaker == speaker)
                hypothesis = "".join(u["text"] for u in run.result.utterances if u["speaker"] == speaker)
                e, n = char_errors(reference, hypothesis)
                errors, length = errors + e, length + n
                ref, hyp = normalise_for_cer(reference), normalise_for_cer(hypothesis)
                found: list[str] = []
                for phrase in phrases:
                    if phrase in ref and not any(phrase in f for f in found):
                        found.append(phrase)
                said += len(found)
                written += sum(phrase in hyp for phrase in found)
        print(f"  transcripts, {band}: CER {errors / max(1, length):.3f} ({errors}/{length} chars), "
              f"playbook phrases written verbatim {written}/{said}")


def compare_transcripts(base: list[bench_analyze.Run], other: list[bench_analyze.Run], label: str) -> None:
    """Utterances whose text changed with biasing (same calls, same order)."""
    print(f"\n== transcripts that differ, off -> {label}")
    for a, b in zip(base, other):
        before = [u["text"] for u in a.result.utterances]
        after = [u["text"] for u in b.result.utterances]
        for x, y in zip(before, after):
            if x != y:
                band = "tel" if a.call.telephone else "wide"
                print(f"  {a.call.script.id} [{band}]: {x}  ->  {y}")
        if len(before) != len(after):
            print(f"  {a.call.script.id}: {len(before)} -> {len(after)} utterances")


# --- silence and noise ---------------------------------------------------------------------------

def bench_noise(engine: WhisperEngine) -> None:
    rng = np.random.default_rng(7)
    samples = 3 * WHISPER_RATE
    for name, audio in (("silence", np.zeros(samples, np.float32)),
                        ("white noise -50 dBFS", rng.normal(0, 10 ** (-50 / 20), samples).astype(np.float32)),
                        ("white noise -25 dBFS", rng.normal(0, 10 ** (-25 / 20), samples).astype(np.float32))):
        text = "".join(p.text for p in engine.transcribe_segment(audio))
        print(f"  {name:22s} -> {text!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["cer", "recall", "noise", "all"], default="all")
    parser.add_argument("--budget", type=int, action="append",
                        help=f"hotword token budget of a biased configuration (repeatable; default {HOTWORD_TOKENS})")
    parser.add_argument("--prompt", choices=["default", "domain"], default="default",
                        help="initial_prompt of the biased configurations: the engine's default sentence, "
                             "or asr.biasing.domain_prompt built from the terms")
    parser.add_argument("--calls", default=str(REPO / "tests" / "calls.toml"))
    parser.add_argument("--only", action="append", default=[], help="call id (repeatable)")
    parser.add_argument("--bands", choices=["script", "both"], default="both")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)

    playbook = load_playbook()
    terms = playbook_terms(playbook)
    model = find_model("whisper")
    biased_prompt = domain_prompt(terms) if args.prompt == "domain" else DEFAULT_PROMPT
    setups = [Setup("off", 0, DEFAULT_PROMPT)]
    setups += [Setup(f"biasing {budget}", budget, biased_prompt) for budget in (args.budget or [HOTWORD_TOKENS])]

    calls = []
    if args.part in ("recall", "all"):
        scripts = bench_analyze.load_calls(args.calls)
        if args.only:
            scripts = [s for s in scripts if s.id in args.only]
        calls = bench_analyze.build_calls(scripts, args.bands)
        print(f"{len(calls)} TTS calls, {sum(c.duration for c in calls):.0f} s of stereo audio")

    recall_runs: dict[str, list[bench_analyze.Run]] = {}
    for setup in setups:
        started = time.perf_counter()
        engine = open_engine(setup, model, terms, args.threads)
        try:
            print(f"\n== {setup.label}: {len(engine.biasing_terms)} hotwords, prompt {engine.prompt_tokens} "
                  f"tokens, max_new_tokens {engine.max_new_tokens}")
            if engine.hotwords:
                print(f"  hotwords: {engine.hotwords}")
            if setup.prompt != DEFAULT_PROMPT or setup.budget == 0:
                print(f"  initial_prompt: {setup.prompt}")
            if args.part in ("cer", "all"):
                bench_cer(engine, list(engine.biasing_terms) or terms[:40], args.verbose)
            if args.part in ("noise", "all"):
                bench_noise(engine)
            if args.part in ("recall", "all"):
                recall_runs[setup.label] = bench_recall(engine, setup.label, calls, playbook, args.verbose)
        finally:
            engine.close()
        print(f"  ({time.perf_counter() - started:.0f} s wall for this configuration)")
    if len(recall_runs) > 1:
        base = recall_runs.pop("off")
        for label, runs in recall_runs.items():
            compare_transcripts(base, runs, label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
