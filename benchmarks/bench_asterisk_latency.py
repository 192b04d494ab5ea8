"""Card and transcript latency by concurrent calls, on a real Asterisk: prints numbers, asserts nothing.

Starts ../shared/asterisk with config/asterisk/ (as the tests do), runs the real AriApp with the
live engine (Whisper base unless --engine), and places N concurrent Local-channel calls whose
customer says complaint sentences with known times (synthesised: callassist.testcalls) and
whose agent answers. For each customer sentence, on the call's timeline (CallStarted.at is its
wall-clock origin: the timeline starts when the customer enters Stasis and audio arrives in real
time; the playback's place on it is found by correlating the recording with the played audio):

    interim   first non-final transcript of the sentence  - the sentence's first audio
    final     its final transcript                        - the sentence's last audio
    card      the first card fired on it                  - the sentence's last audio

p50/p95 per N, the same split into the call's first and second half (does the delay grow
during a call?), this process's CPU, the CallFaults about decoding and the interims shed.

    python benchmarks/bench_asterisk_latency.py [--calls 1 2 4 8] [--sentences 8]
    # the code before a change, same benchmark, same machine:
    git worktree add /tmp/before REV && python benchmarks/bench_asterisk_latency.py --repo /tmp/before
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent.parent
SENTENCES = ("你们乱扣我话费，我要精神赔偿。", "再不解决我就找记者曝光你们。", "我要去工信部投诉你们。",
             "我已经请了律师，准备起诉你们。", "你们基站辐射太大了，影响我家人健康。",
             "我要求双倍返还，不然我去消协投诉。")
AGENT_LINES = ("您好，请问有什么可以帮您？", "您先别着急，我马上为您核实。", "好的，我记下了。")
# words Whisper appends after a sentence from the silence that follows it (none of the lines end so)
STRAY_ENDINGS = ("请注意", "您好", "这边", "作词", "谢谢观看", "字幕")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def fmt(values: list[float]) -> str:
    return f"{pct(values, 50):5.2f} {pct(values, 95):5.2f}" if values else "    -     -"


def build_audio(directory: Path, sentences: int) -> tuple[str, str, np.ndarray, list[tuple[float, float]]]:
    """The customer's and agent's files for Asterisk, the customer's PCM and its sentence times."""
    from callassist.testcalls import CallScript, Turn, build_call

    turns = tuple(Turn("customer", SENTENCES[i % len(SENTENCES)], pause=2.5 if i else 0.3)
                  for i in range(sentences))
    customer = build_call(CallScript("bench-customer", turns), telephone=True, tail=1.0)
    agent_turns = tuple(Turn("agent", AGENT_LINES[i % len(AGENT_LINES)], pause=6.0) for i in range(sentences // 2))
    agent = build_call(CallScript("bench-agent", agent_turns), telephone=True)
    c_pcm, a_pcm = customer.channel("customer"), agent.channel("agent")
    names = []
    for name, pcm in (("bench-customer", c_pcm), ("bench-agent", a_pcm)):
        path = directory / f"{name}.sln16"
        pcm.astype("<i2").tofile(path)
        path.chmod(0o644)
        names.append(str(directory / name))
    return names[0], names[1], c_pcm, [(t.start, t.end) for t in customer.turns]


def playback_offset(recording: Path, played: np.ndarray) -> float:
    """Where the played customer audio starts on the call's timeline (the recording's left side)."""
    import soundfile as sf
    from scipy import signal

    data, rate = sf.read(recording, dtype="int16")
    heard = data[:rate * 16, 0].astype(np.float64)   # the start: sentences repeat later in a call
    ref = played[:rate * 8].astype(np.float64)
    lag = int(np.argmax(signal.correlate(heard, ref, mode="valid", method="fft")))
    return lag / rate


async def run_calls(asterisk_ari, engine, matcher, recordings: Path, audio, calls: int) -> dict:
    from asterisk_fixture import network_for, running_app
    from callassist.events import CallEnded, CallFault, CallStarted, CardFired, CardWithdrawn, TranscriptUpdate

    customer_file, agent_file, customer_pcm, times = audio
    shed_before = getattr(engine.meter, "interims_shed", 0)
    cpu_before = time.process_time()
    wall_before = time.monotonic()
    async with network_for(asterisk_ari) as network, running_app(engine, matcher, recordings, asterisk_ari) as run:
        ids = []
        for _ in range(calls):
            ids.append(await network.originate(customer_file, agent_file))
            await asyncio.sleep(0.3)            # staggered a little, as calls arrive
        started = [await run.first_call()]
        deadline = time.monotonic() + len(customer_pcm) / 16000 + 120
        while time.monotonic() < deadline:
            ended = {e.call_id for e in run.events if isinstance(e, CallEnded)}
            begun = {e.call_id for e in run.events if isinstance(e, CallStarted)}
            if len(begun) >= calls and begun <= ended:
                break
            await asyncio.sleep(0.2)
        del started
    cpu = (time.process_time() - cpu_before) / (time.monotonic() - wall_before) * 100
    result: dict[str, list[float]] = {k: [] for k in ("interim", "final", "card", "card_1st", "card_2nd",
                                                       "final_1st", "final_2nd")}
    faults = withdrawn = stray = finals = 0
    for call in [e for e in run.events if isinstance(e, CallStarted)]:
        ended = run.of(call.call_id, CallEnded)
        if not ended or not ended[0].recording:
            continue
        offset = playback_offset(Path(ended[0].recording), customer_pcm)
        updates = [e for e in run.of(call.call_id, TranscriptUpdate) if e.speaker == "customer" and e.text]
        cards = [e for e in run.of(call.call_id, CardFired) if e.card.speaker == "customer"]
        faults += sum("识别" in e.problem for e in run.of(call.call_id, CallFault))
        withdrawn += len(run.of(call.call_id, CardWithdrawn))
        for line in run.of(call.call_id, TranscriptUpdate):
            if line.final and line.text:
                finals += 1
                stray += line.text.strip(" ，,。.！!？?").endswith(STRAY_ENDINGS)
        half = (times[0][0] + times[-1][1]) / 2
        if os.environ.get("BENCH_DUMP"):
            print("offset", offset, "sentences", [(round(a + offset, 2), round(b + offset, 2)) for a, b in times])
            gone = {e.card_id for e in run.of(call.call_id, CardWithdrawn)}
            for c in cards:
                print("  card", "WITHDRAWN" if c.card.card_id in gone else "", c.card.category, c.card.start,
                      c.card.end, round(c.at - call.at, 2), c.card.text, c.card.via)
            for u in updates:
                print("  upd", u.final, u.utterance, u.start, u.end, round(u.at - call.at, 2), u.text)
        for start, end in times:
            s, t = start + offset, end + offset
            mine = [u for u in updates if u.start < t + 0.5 and u.end > s - 0.5]
            interim = [u.at for u in mine if not u.final]
            final = [u.at for u in mine if u.final]
            card = [c.at for c in cards if c.card.start < t + 0.5 and c.card.end > s - 0.5]
            part = "1st" if end <= half else "2nd"
            if interim:
                result["interim"].append(min(interim) - (call.at + s))
            if final:
                result["final"].append(min(final) - (call.at + t))
                result[f"final_{part}"].append(min(final) - (call.at + t))
            if card:
                result["card"].append(min(card) - (call.at + t))
                result[f"card_{part}"].append(min(card) - (call.at + t))
    result_summary = {"cpu": cpu, "faults": faults, "withdrawn": withdrawn, "stray": f"{stray}/{finals}",
                      "shed": getattr(engine.meter, "interims_shed", 0) - shed_before,
                      "sentences": len(times) * calls, **result}
    return result_summary


def start_asterisk(work: Path):
    """The shared Asterisk with config/asterisk/, as the tests start it."""
    from asterisk_fixture import start_asterisk as start

    (work / "asterisk-build").mkdir()
    return start(work / "asterisk-build", work)


async def main(args: argparse.Namespace) -> None:
    from asr import create_engine
    from callassist.config import load_config
    from prompts.matcher import Matcher
    from prompts.playbook import load_playbook

    config = load_config(env={})
    note = ""
    if args.engine == "vosk":
        from asr.engine import ModelNotFoundError
        from asr.models import find_test_vosk_model
        try:
            engine = create_engine(config, "vosk")
        except ModelNotFoundError:     # no Chinese model here: the Korean test model times the path
            engine = create_engine(config, "vosk", model=find_test_vosk_model())
            note = " (Korean test model: latency of its transcripts only, no cards expected)"
    else:
        engine = create_engine(config, args.engine)
    matcher = Matcher.from_config(load_playbook(), config.matcher)
    with tempfile.TemporaryDirectory(prefix="bench-ast-") as tmp:
        work = Path(tmp)
        (work / "audio").mkdir()
        (work / "audio").chmod(0o755)
        audio = await asyncio.to_thread(build_audio, work / "audio", args.sentences)
        server, asterisk = await asyncio.to_thread(start_asterisk, work)
        ari = asterisk.ari
        print(f"code: {args.repo}  engine: {engine.name}{note}  customer sentences per call: {args.sentences} "
              f"({len(audio[2]) / 16000:.0f} s calls)  cores: {os.cpu_count()}  load: {os.getloadavg()[0]:.2f}")
        print("seconds after the sentence's first audio (interim) or last audio (final, card); p50 p95")
        print(" calls  interim(p50 p95)  final(p50 p95)  card(p50 p95)  card 1st half  card 2nd half  "
              "cards/sentences  withdrawn  decode faults  shed  CPU%  finals ending in a stray word")
        try:
            for calls in args.calls:
                r = await run_calls(ari, engine, matcher, work / f"rec-{calls}", audio, calls)
                print(f" {calls:5d}  {fmt(r['interim'])}       {fmt(r['final'])}     {fmt(r['card'])}    "
                      f"{fmt(r['card_1st'])}    {fmt(r['card_2nd'])}    {len(r['card']):3d}/{r['sentences']:<3d}"
                      f"          {r['withdrawn']:3d}        {r['faults']:3d}    {r['shed']:4d}  {r['cpu']:4.0f}"
                      f"  {r['stray']}",
                      flush=True)
        finally:
            with contextlib.suppress(Exception):
                server.stop()
            engine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--sentences", type=int, default=8, help="customer sentences per call")
    parser.add_argument("--engine", default="whisper", choices=["whisper", "vosk"])
    parser.add_argument("--repo", type=Path, default=HERE, help="the callassist checkout to measure")
    args = parser.parse_args()
    sys.path[:0] = [str(args.repo.resolve()), str(HERE / "tests")]
    asyncio.run(main(args))
