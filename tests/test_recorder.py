"""Call recordings: two legs on one timeline, bounded buffering, crash-safe files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ari_app.recorder import CallRecorder, partial_path, recover_partial

RATE = 16000
FRAME = 320                                   # samples in 20 ms
ROOT = Path(__file__).resolve().parent.parent


def tone(seconds: float, value: int) -> np.ndarray:
    """A recognisable leg: a ramp offset by `value` (never zero)."""
    n = int(seconds * RATE)
    return (value + np.arange(n) % 1000).astype("<i2")


def frames(samples: np.ndarray) -> list[bytes]:
    return [samples[i:i + FRAME].tobytes() for i in range(0, len(samples), FRAME)]


def read(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="int16", always_2d=True)
    assert rate == RATE and data.shape[1] == 2
    return data


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_late_agent_lands_at_its_offset(tmp_path, fmt):
    customer, agent = tone(5.0, 5000), tone(2.5, 20000)
    recorder = CallRecorder(tmp_path / f"call.{fmt}", fmt=fmt)
    agent_frames = iter(frames(agent))
    for i, frame in enumerate(frames(customer)):
        recorder.write("customer", frame)
        if i == 125:                                     # 2.5 s in: the agent's tap is ready
            recorder.write("agent", next(agent_frames), at_sample=int(2.5 * RATE))
        elif i > 125:
            recorder.write("agent", next(agent_frames, b""))
    assert recorder.close() == pytest.approx(5.0)
    assert recorder.close() == pytest.approx(5.0)        # idempotent
    data = read(tmp_path / f"call.{fmt}")
    assert len(data) == 5 * RATE
    assert (data[:, 0] == customer).all()
    assert (data[:40000, 1] == 0).all() and (data[40000:, 1] == agent).all()
    assert not partial_path(tmp_path / f"call.{fmt}").exists()
    assert sf.info(str(tmp_path / f"call.{fmt}")).format == fmt.upper()


def test_absent_leg_is_padded_and_buffering_stays_bounded(tmp_path):
    recorder = CallRecorder(tmp_path / "call.wav", max_lag=1.0)
    customer = tone(4.0, 3000)
    for frame in frames(customer):
        recorder.write("customer", frame)
        assert len(recorder._pending["customer"]) <= 2 * (RATE + FRAME)
    assert recorder.duration >= 3.0                      # the file grew without the agent
    recorder.close()
    data = read(tmp_path / "call.wav")
    assert (data[:, 0] == customer).all() and not data[:, 1].any()


def test_stalled_leg_is_padded_and_resumes_in_place(tmp_path):
    recorder = CallRecorder(tmp_path / "call.wav")
    agent = tone(3.0, 9000)
    for i, frame in enumerate(frames(agent)):
        if i < 50:                                       # the customer's RTP stalls after 1 s
            recorder.write("customer", tone(0.02, 100).tobytes(), at_sample=0 if i == 0 else None)
        recorder.write("agent", frame, at_sample=0 if i == 0 else None)
    assert recorder.duration >= 1.9
    recorder.write("customer", tone(0.02, 7000).tobytes(), at_sample=int(2.5 * RATE))
    recorder.close()
    data = read(tmp_path / "call.wav")
    assert (data[:, 1] == agent).all()
    left = data[:, 0]
    assert left[:RATE].all() and not left[RATE:40000].any() and left[40000:40000 + FRAME].all()


def test_overlapping_position_loses_nothing(tmp_path):
    recorder = CallRecorder(tmp_path / "call.wav")
    recorder.write("customer", tone(0.5, 100).tobytes())
    recorder.write("customer", tone(0.5, 200).tobytes(), at_sample=4000)    # behind: appended
    assert recorder.close() == pytest.approx(1.0)


def test_bad_input_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="must be one of"):
        CallRecorder(tmp_path / "x.ogg", fmt="ogg")
    recorder = CallRecorder(tmp_path / "call.wav")
    with pytest.raises(ValueError, match="unknown speaker"):
        recorder.write("supervisor", b"\x00\x00")         # type: ignore[arg-type]
    with pytest.raises(ValueError, match="odd PCM length"):
        recorder.write("customer", b"\x00")
    with pytest.raises(FileExistsError):
        CallRecorder(tmp_path / "call.wav")               # never overwrites a recording
    recorder.close()
    with pytest.raises(RuntimeError, match="closed"):
        recorder.write("customer", b"\x00\x00")
    (tmp_path / "old.flac").write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        CallRecorder(tmp_path / "old.flac", fmt="flac")
    assert (tmp_path / "old.flac").read_bytes() == b"keep me"


async def test_aclose_encodes_off_the_event_loop(tmp_path):
    recorder = CallRecorder(tmp_path / "call.flac", fmt="flac")
    recorder.write("customer", tone(1.0, 100).tobytes())
    assert await recorder.aclose() == pytest.approx(1.0)
    assert len(read(tmp_path / "call.flac")) == RATE


CRASHING_CALL = textwrap.dedent("""
    import sys, time
    import numpy as np
    from ari_app.recorder import CallRecorder
    recorder = CallRecorder(sys.argv[1], fmt=sys.argv[2], flush_interval=0.5)
    n = np.arange(3 * 16000)
    left, right = (1000 + n % 700).astype("<i2"), (-1000 - n % 300).astype("<i2")
    for i in range(0, len(n), 320):
        recorder.write("customer", left[i:i + 320].tobytes())
        recorder.write("agent", right[i:i + 320].tobytes())
    print("written", flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_recording_is_playable_while_open_and_after_sigkill(tmp_path, fmt):
    path = tmp_path / f"call.{fmt}"
    live = path if fmt == "wav" else partial_path(path)
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_CALL, str(path), fmt], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "written"

        def check() -> None:
            with wave.open(str(live)) as w:                 # strict: trusts the header's sizes
                assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, RATE, 2)
                declared = w.getnframes()
            assert 2.5 * RATE <= declared <= 3 * RATE       # at most flush_interval missing
            data = read(live)
            n = np.arange(len(data))
            assert (data[:, 0] == 1000 + n % 700).all() and (data[:, 1] == -1000 - n % 300).all()

        check()                                             # while the recorder is open
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        check()                                             # after the crash
    finally:
        proc.kill()
        proc.wait(10)
    if fmt == "flac":
        assert not path.exists()
        assert recover_partial(path) == path
        assert not live.exists() and 2.5 * RATE <= len(read(path)) <= 3 * RATE
    else:
        assert recover_partial(path) is None
