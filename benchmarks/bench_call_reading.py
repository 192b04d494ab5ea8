"""What one call-level reading (prompts.call_reading.read_call) costs, on the dev calls.

    python benchmarks/bench_call_reading.py [--repeat N]

For every call of prompts/corpus/calls_dev.jsonl (cards from the matcher, computed once,
as the live path has them from the bus), times read_call on the whole call and on the call
repeated to 3x its length (a long call), and prints the median and worst per reading. The
live path (agent_ui.live_reading) runs it on a worker thread because it costs more than
the 1 ms a coroutine may hold the event loop.
"""
from __future__ import annotations

import argparse
import statistics
import time

from prompts.call_reading import cards_from_matcher, load_call_types, read_call
from prompts.evaluate import CALLS_DEV_FILE, read_calls
from prompts.matcher import Matcher
from prompts.playbook import load_playbook


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    matcher = Matcher(load_playbook())
    types = load_call_types()
    calls = read_calls(CALLS_DEV_FILE)
    for factor in (1, 3):
        timings = []
        turns_total = 0
        for call in calls:
            lines = [dict(t) for t in call.turns] * factor
            cards = cards_from_matcher(matcher, lines)
            turns_total += len(lines)
            for _ in range(args.repeat):
                began = time.perf_counter()
                read_call(lines, cards, None, types)
                timings.append(time.perf_counter() - began)
        print(f"{len(calls)} calls x{factor} ({turns_total / len(calls):.0f} turns a call): "
              f"median {1000 * statistics.median(timings):.2f} ms, "
              f"p95 {1000 * sorted(timings)[int(0.95 * len(timings))]:.2f} ms, "
              f"worst {1000 * max(timings):.2f} ms per reading")


if __name__ == "__main__":
    main()
