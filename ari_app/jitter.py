"""Reorder buffer for one RTP stream: packets in by sequence number, payloads out in order.

Pure logic, no sockets or timers: the caller passes the arrival time with each packet
and asks again (`expire`) when `deadline` passes. Sequence numbers are 16-bit and wrap;
inside the buffer they are "extended" (unwrapped) integers. A packet that has not
arrived when the window has passed is given up on: its slot is filled with silence of
the same length as its neighbours, so the leg's clock (and the recording's timeline)
stays true. A packet that turns up after its slot was filled is dropped as late.

The jump limits follow RFC 3550 A.1: a jump ahead of more than `max_dropout` packets
or back more than `max_misorder` is taken as the sender restarting its sequence only
once the next packet confirms it (a lone stray packet is dropped).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

SEQ_MOD = 1 << 16
_HALF = SEQ_MOD // 2
_FILLED_MEMORY = 1024          # filled slots remembered to tell "late" from "duplicate"


@dataclass
class JitterCounters:
    duplicates: int = 0        # a packet already held or already delivered
    late: int = 0              # arrived after its slot was filled with silence (or a stray)
    reordered: int = 0         # arrived after a higher sequence number, still in time
    lost_filled: int = 0       # packets that never came, replaced by silence
    resyncs: int = 0           # sender restarted its sequence numbers (or a new SSRC)


class JitterBuffer:
    def __init__(self, window: float, frame_time: float = 0.020,
                 max_dropout: int = 3000, max_misorder: int = 100) -> None:
        if window < 0:
            raise ValueError("window must be >= 0")
        self.window = window
        # A count bound equal to the time bound at the nominal packet rate: the same
        # decision in real time, and a deterministic one when packets come in bursts.
        self.max_held = round(window / frame_time)
        self.max_dropout = max_dropout
        self.max_misorder = max_misorder
        self.counters = JitterCounters()
        self._next: int | None = None            # extended seq of the next payload out
        self._first = 0                          # extended seq of the first packet
        self._highest = 0                        # highest extended seq accepted
        self._held: dict[int, tuple[bytes, float]] = {}
        self._filled: set[int] = set()
        self._filled_order: deque[int] = deque()
        self._fill_len = 0                       # bytes of silence per missing packet
        self._candidate: tuple[int, bytes] | None = None   # possible sequence restart

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def deadline(self) -> float | None:
        """When the oldest packet waiting behind a gap has waited `window`; None if none."""
        if not self._held:
            return None
        return min(arrived for _, arrived in self._held.values()) + self.window

    def push(self, seq: int, payload: bytes, now: float) -> list[bytes]:
        """Add a packet; returns the payloads (and silence fills) now due, in order."""
        seq &= 0xFFFF
        if self._next is None:
            self._start(seq + SEQ_MOD)
        assert self._next is not None            # set by _start
        delta = ((seq - self._highest + _HALF) & 0xFFFF) - _HALF
        ext = self._highest + delta
        if delta > self.max_dropout or ext < self._next - self.max_misorder:
            return self._maybe_restart(seq, payload, now)
        if self._candidate is not None:              # the stray was not a restart
            self.counters.late += 1
            self._candidate = None
        if ext < self._next:
            if ext in self._filled or ext < self._first:
                self.counters.late += 1
            else:
                self.counters.duplicates += 1
            return []
        if ext in self._held:
            self.counters.duplicates += 1
            return []
        if ext < self._highest:
            self.counters.reordered += 1
        else:
            self._highest = ext
        self._held[ext] = (payload, now)
        self._fill_len = len(payload)
        return self._drain(now)

    def expire(self, now: float) -> list[bytes]:
        """Release what waited long enough behind a gap (call at or after `deadline`)."""
        return self._drain(now)

    def flush(self) -> list[bytes]:
        """Release everything held, filling the gaps (the stream stalled or ends)."""
        return self._drain(0.0, force=True)

    def reset(self) -> list[bytes]:
        """Flush, then forget the sequence base: the next packet starts a new run."""
        out = self.flush()
        if self._candidate is not None:
            self.counters.late += 1
            self._candidate = None
        self._next = None
        self._filled.clear()
        self._filled_order.clear()
        return out

    def _start(self, ext: int) -> None:
        self._next = self._first = self._highest = ext

    def _maybe_restart(self, seq: int, payload: bytes, now: float) -> list[bytes]:
        candidate = self._candidate
        if candidate is None or seq != (candidate[0] + 1) & 0xFFFF:
            if candidate is not None:
                self.counters.late += 1
            self._candidate = (seq, payload)
            return []
        self._candidate = None
        self.counters.resyncs += 1
        out = self.flush()
        assert self._next is not None
        base = self._next - (self._next & 0xFFFF) + candidate[0]
        if base < self._next:
            base += SEQ_MOD
        self._start(base)
        out += self.push(candidate[0], candidate[1], now)
        out += self.push(seq, payload, now)
        return out

    def _drain(self, now: float, force: bool = False) -> list[bytes]:
        out: list[bytes] = []
        held = self._held
        while held:
            assert self._next is not None
            item = held.pop(self._next, None)
            if item is not None:
                out.append(item[0])
                self._next += 1
                continue
            # A gap: wait for it unless the window has passed.
            if not (force or len(held) > self.max_held
                    or now - min(arrived for _, arrived in held.values()) >= self.window):
                break
            first = min(held)
            missing = first - self._next
            out.extend([bytes(self._fill_len)] * missing)
            self.counters.lost_filled += missing
            self._remember_filled(range(max(self._next, first - _FILLED_MEMORY), first))
            self._next = first
        return out

    def _remember_filled(self, slots: range) -> None:
        for slot in slots:
            self._filled.add(slot)
            self._filled_order.append(slot)
        while len(self._filled_order) > _FILLED_MEMORY:
            self._filled.discard(self._filled_order.popleft())
