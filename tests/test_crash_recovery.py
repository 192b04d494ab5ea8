"""Crash recovery (issue 9 finding 3): a callassist killed with SIGKILL mid-call leaves
the call's recording on disk; the next start-up closes the call out linked to that
recording, repaired and readable, with the audio's true length as its duration, and
retention deletes it in time.

The crashing process is the real ARI app and store (no speech engine: recording is
what is under test) tapping a call of the ARI test peer, which keeps the call up
after the kill, as Asterisk does.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agent_ui.store import Store
from ari_peer import AriPeer

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
WAV_HEADER = 44
DOWNTIME = 1.5                 # seconds between the kill and the restart

# The product's ARI app and store, as `callassist serve` wires them, minus the recogniser.
CRASHING_APP = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from agent_ui.store import Store
    from ari_app.app import AriApp
    from callassist.bus import EventBus
    from callassist.config import load_config

    async def main(url: str, data_dir: str, fmt: str) -> None:
        config = load_config(env={
            "CALLASSIST_ARI_URL": url, "CALLASSIST_ARI_PASSWORD": "secret",
            "CALLASSIST_ARI_REQUEST_TIMEOUT": "2", "CALLASSIST_RECORDING_FORMAT": fmt,
            "CALLASSIST_RTP_PORT_MIN": "43000", "CALLASSIST_RTP_PORT_MAX": "43499"})
        store = Store(Path(data_dir) / "callassist.db")
        store.recordings_dir.mkdir(exist_ok=True)
        bus = EventBus()
        recording = asyncio.create_task(store.events.run(bus))
        app = AriApp(config, bus, None, store.recordings_dir)
        await app.start()
        await app.wait_ready(10)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(*sys.argv[1:]))
""")


def customer_voice(seconds: float = 30.0) -> np.ndarray:
    """A loud, never-silent ramp: recognisable in the recording's left channel."""
    n = np.arange(int(seconds * RATE))
    return (3000 + n % 4000).astype(np.int16)


def raw_frames(path: Path) -> np.ndarray:
    """The stereo frames physically in a WavWriter file, whatever its header says."""
    data = path.read_bytes()[WAV_HEADER:]
    data = data[:len(data) // 4 * 4]
    return np.frombuffer(data, dtype="<i2").reshape(-1, 2)


async def wait_until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        await asyncio.sleep(0.05)


@pytest.fixture
async def peer():
    peer = await AriPeer().start()
    yield peer
    await peer.stop()


async def crash_mid_call(peer: AriPeer, data_dir: Path, fmt: str, seconds: float) -> Path:
    """Run the app, put a call through it, SIGKILL it once `seconds` of audio are on
    disk; returns the file the recorder was writing."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_APP, peer.url, str(data_dir), fmt, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.decode().strip() == "ready"
        call = peer.start_call(customer_voice(), customer_voice(), answer_after=0.3)
        name = call.customer.id.replace(";", "_")
        live = data_dir / "recordings" / (f"{name}.wav" if fmt == "wav" else f"{name}.flac.partial.wav")
        await wait_until(lambda: live.exists() and
                         (live.stat().st_size - WAV_HEADER) / 4 / RATE >= seconds,
                         timeout=seconds + 10, what="recorded audio")
        proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return live


def startup_recovery(data_dir: Path) -> Store:
    """What `callassist serve` does at start-up when there is no call to tap again."""
    from callassist.recovery import StartupRecovery
    store = Store(data_dir / "callassist.db")
    StartupRecovery(store).close_out()
    return store


@pytest.mark.parametrize("fmt", ["wav", "flac"])
async def test_call_killed_mid_recording_is_closed_out_with_its_recording(
        peer: AriPeer, tmp_path: Path, fmt: str) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    live = await crash_mid_call(peer, data_dir, fmt, seconds=2.3)
    killed_at = time.time()
    on_disk = raw_frames(live).copy()              # the audio the crash left, as bytes on disk
    final = live if fmt == "wav" else live.with_name(live.name.removesuffix(".partial.wav"))

    # The link exists from the moment the recording opened: the crash could not lose it.
    with Store(data_dir / "callassist.db") as before:
        (row,) = before.calls.live_calls()
        call_id = row["call_id"]
        assert before.calls.get_call(call_id)["recording_path"] == str(final)

    await wait_until(lambda: time.time() - killed_at >= DOWNTIME, what="the downtime")
    store = await asyncio.to_thread(startup_recovery, data_dir)
    try:
        call = store.calls.get_call(call_id)
        assert call["status"] == "ended" and store.calls.live_calls() == []
        assert any("restarted" in f["problem"] for f in call["faults"])
        assert call["recording_path"] == str(final)
        assert store.recordings.file(call["recording_path"]) == final.resolve()  # QA's player
        assert not Path(str(final) + ".partial.wav").exists()

        # Readable by a strict reader, and every frame that reached the disk is in it.
        recovered, rate = sf.read(str(final), dtype="int16", always_2d=True)
        assert rate == RATE and recovered.shape[1] == 2
        assert len(on_disk) >= 2.3 * RATE
        np.testing.assert_array_equal(recovered, on_disk)
        assert (recovered[-RATE:, 0] >= 3000).mean() > 0.9      # the customer's voice, not silence

        # Duration = the audio, not the wall time (which includes the downtime).
        audio_seconds = len(on_disk) / RATE
        assert abs(call["duration"] - audio_seconds) <= 0.1
        # and the kill lost (next to) nothing: the file runs up to the moment of the kill
        assert -0.05 <= killed_at - call["started_at"] - audio_seconds <= 0.5
        wall_seconds = time.time() - call["started_at"]
        assert wall_seconds - audio_seconds >= DOWNTIME - 0.2   # control: a wall-clock duration fails

        # Retention deletes the recording with its call (control: not before its time).
        assert store.retention.purge(retention_days=1, now=call["started_at"] + 0.5 * 86400) == 0
        assert final.exists()
        assert store.retention.purge(retention_days=1, now=call["started_at"] + 2 * 86400) == 1
        assert not final.exists() and store.calls.get_call(call_id) is None
    finally:
        store.close()


def test_unlinked_recording_is_found_by_its_call_id(tmp_path: Path) -> None:
    """A call whose recording path was never stored (the demo, or a database written
    before the path was stored at start): recovery finds the file by the naming rule."""
    from ari_app.recorder import CallRecorder
    from callassist.events import CallStarted
    data_dir = tmp_path / "data"
    (data_dir / "recordings").mkdir(parents=True)
    recorder = CallRecorder(data_dir / "recordings" / "1732.7_2.wav")    # the naming rule
    recorder.write("customer", customer_voice(1.25).tobytes())
    recorder.write("agent", customer_voice(1.25).tobytes())
    recorder.flush()
    with Store(data_dir / "callassist.db") as store:
        store.events.record(CallStarted("1732.7;2", at=time.time() - 600))
    store = startup_recovery(data_dir)
    try:
        call = store.calls.get_call("1732.7;2")
        assert call["recording_path"] == str(recorder.path)
        assert call["duration"] == pytest.approx(1.25, abs=0.01)
        # control: a call that never recorded gets no file, and lasts until its last event
        store.events.record(CallStarted("never-recorded", at=time.time() - 600))
        assert store.recovery.close_interrupted_calls() == 1
        assert store.calls.get_call("never-recorded")["recording_path"] is None
    finally:
        store.close()


def test_flac_encode_cut_by_the_crash_is_redone_without_losing_audio(tmp_path: Path) -> None:
    from ari_app.recorder import CallRecorder, partial_path, recover_recording
    path = tmp_path / "call.flac"
    recorder = CallRecorder(path, fmt="flac")
    voice = customer_voice(3.0)
    for i in range(0, len(voice), 320):                # both legs, 20 ms at a time
        recorder.write("customer", voice[i:i + 320].tobytes())
        recorder.write("agent", (-voice[i:i + 320]).tobytes())
    recorder.flush()
    live = partial_path(path)
    captured = raw_frames(live).copy()
    # the state a kill during close() leaves: the capture, and a FLAC cut mid-write
    shutil.copyfile(live, tmp_path / "capture.wav")
    sf.write(str(tmp_path / "whole.flac"), captured, RATE, format="FLAC", subtype="PCM_16")
    whole = (tmp_path / "whole.flac").read_bytes()
    cut = path.with_name(path.name + ".tmp")
    cut.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(RuntimeError):                  # control: the cut file is not readable
        sf.read(str(cut))

    found = recover_recording(path)
    assert found is not None and found.path == path
    assert not live.exists() and not cut.exists()
    data, _ = sf.read(str(path), dtype="int16", always_2d=True)
    np.testing.assert_array_equal(data, captured)
    assert found.duration == pytest.approx(3.0, abs=0.001)

    # a kill after the encode but before the capture was deleted: the FLAC is kept
    shutil.copyfile(tmp_path / "capture.wav", live)
    assert recover_recording(path).frames == len(captured) and not live.exists()
    # a capture that differs from the FLAC: both kept, clearly refused
    with open(tmp_path / "capture.wav", "ab") as fh:
        fh.write(b"\x01\x00\x02\x00" * 100)
    shutil.copyfile(tmp_path / "capture.wav", live)
    with pytest.raises(FileExistsError, match="differ"):
        recover_recording(path)
    assert live.exists() and path.exists()


def test_damaged_recording_is_reported_and_kept(tmp_path: Path) -> None:
    from callassist.events import CallStarted
    data_dir = tmp_path / "data"
    (data_dir / "recordings").mkdir(parents=True)
    junk = data_dir / "recordings" / "x.wav"
    junk.write_bytes(b"not a wav file at all, but someone's data" * 3)
    with Store(data_dir / "callassist.db") as store:
        store.events.record(CallStarted("x", at=time.time() - 60, recording=str(junk)))
    store = startup_recovery(data_dir)
    try:
        call = store.calls.get_call("x")
        assert call["status"] == "ended"
        assert any("recording not recovered" in f["problem"] for f in call["faults"])
        assert junk.read_bytes() == b"not a wav file at all, but someone's data" * 3
    finally:
        store.close()


def test_resumed_recording_drops_a_torn_frame_and_fills_the_gap_with_silence(tmp_path: Path) -> None:
    from ari_app.recorder import CallRecorder
    path = tmp_path / "call.wav"
    recorder = CallRecorder(path)
    voice = customer_voice(1.0)
    for i in range(0, len(voice), 320):
        recorder.write("customer", voice[i:i + 320].tobytes())
        recorder.write("agent", voice[i:i + 320].tobytes())
    with open(path, "ab") as fh:                 # a kill in the middle of a frame
        fh.write(b"\x07\x00")
    before = raw_frames(path).copy()
    assert len(before) == RATE

    resumed = CallRecorder.resume(path)
    assert resumed.duration == 1.0
    later = customer_voice(0.5)
    resumed.write("customer", later.tobytes(), at_sample=int(2.5 * RATE))   # 1.5 s down
    resumed.write("agent", later.tobytes(), at_sample=int(2.5 * RATE))
    assert resumed.close() == 3.0
    audio, _ = sf.read(str(path), dtype="int16", always_2d=True)
    np.testing.assert_array_equal(audio[:RATE], before)                    # nothing lost
    assert not audio[RATE:int(2.5 * RATE)].any()                             # the gap: silence
    np.testing.assert_array_equal(audio[int(2.5 * RATE):, 0], later)       # control: audio after it


def test_a_file_that_is_not_ours_is_not_continued_nor_changed(tmp_path: Path) -> None:
    from ari_app.recorder import CallRecorder
    mono = tmp_path / "mono.wav"
    sf.write(str(mono), customer_voice(0.5), RATE, subtype="PCM_16")
    with open(mono, "ab") as fh:                 # what a repair would cut off
        fh.write(b"\x01")
    original = mono.read_bytes()
    with pytest.raises(ValueError, match="channel"):
        CallRecorder.resume(mono)
    assert mono.read_bytes() == original
    with pytest.raises(FileNotFoundError):
        CallRecorder.resume(tmp_path / "absent.wav")
