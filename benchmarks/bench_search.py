"""Chinese full-text search of the call archive on both store engines: SQLite FTS5
(trigram tokenizer) against PostgreSQL pg_trgm (GIN index, LIKE), same data, same queries.

    python benchmarks/bench_search.py [--calls 20000] [--utterances 20] [--queries 40]
                                      [--database-url postgresql://...]

Data: `--calls` ended calls of `--utterances` final lines each, drawn (seeded) from the
dev dialogues in prompts/corpus (calls_dev*.jsonl; never the blind sets), loaded straight
into the tables the store reads (as its own writes would leave them). Queries: random
2-, 3- and 5-character pieces of stored lines; each is run as the QA search does,
store.calls.list_calls(text=q, limit=50) (the newest page of matching calls with snippets), and
store.calls.count_calls(text=q). Printed per engine and query length: p50/p95 of each, the
mean number of matching calls, and the size of the search index. Without --database-url a
PostgreSQL 15 of its own is started in a temporary directory (tests/servers.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from agent_ui.archive_store import search_form  # noqa: E402
from agent_ui.db_postgres import PostgresDatabase  # noqa: E402
from agent_ui.store import Store  # noqa: E402

CORPUS = ("calls_dev.jsonl", "calls_dev2.jsonl")
T0 = 1_700_000_000.0
LENGTHS = (2, 3, 5)


def corpus_lines() -> list[str]:
    lines = []
    for name in CORPUS:
        for line in (REPO / "prompts" / "corpus" / name).read_text(encoding="utf-8").splitlines():
            lines += [turn["text"] for turn in json.loads(line)["turns"] if turn["text"].strip()]
    return lines


def make_rows(calls: int, per_call: int, seed: int = 7) -> tuple[list[tuple], list[tuple]]:
    rng = random.Random(seed)
    lines = corpus_lines()
    call_rows, utterance_rows = [], []
    for n in range(calls):
        call_id = f"bench-{n:06d}"
        started = T0 + n * 60
        call_rows.append((call_id, started, started + 300, 300.0, "ended"))
        for i in range(per_call):
            text = rng.choice(lines)
            utterance_rows.append((call_id, ("customer", "agent")[i % 2], i, text, i * 10.0, i * 10.0 + 5,
                                   search_form(text)))
    return call_rows, utterance_rows


def load(store: Store, call_rows: list[tuple], utterance_rows: list[tuple]) -> float:
    started = time.perf_counter()
    with store.db.write() as db:
        db.executemany("INSERT INTO calls (call_id, started_at, ended_at, duration, status) "
                       "VALUES (?, ?, ?, ?, ?)", call_rows)
        db.executemany('INSERT INTO utterances (call_id, speaker, utterance, text, start, "end", final, '
                       'search_text) VALUES (?, ?, ?, ?, ?, ?, 1, ?)', utterance_rows)
    if store.engine == "postgresql":
        with store.db.query() as db:
            db.execute("ANALYZE")
    return time.perf_counter() - started


def index_bytes(store: Store) -> int:
    with store.db.query() as db:
        if store.engine == "sqlite":
            return int(db.execute("SELECT SUM(pgsize) FROM dbstat WHERE name LIKE 'utterances_fts%'")
                       .fetchone()[0])
        return int(db.execute("SELECT pg_relation_size('utterances_trgm') + pg_relation_size('utterances_bigrams')").fetchone()[0])


def queries(utterance_rows: list[tuple], count: int, seed: int = 11) -> dict[int, list[str]]:
    rng = random.Random(seed)
    texts = [row[6] for row in utterance_rows]
    out: dict[int, list[str]] = {}
    for size in LENGTHS:
        chosen: list[str] = []
        while len(chosen) < count:
            text = rng.choice(texts)
            if len(text) >= size:
                start = rng.randrange(len(text) - size + 1)
                chosen.append(text[start:start + size])
        out[size] = chosen
    return out


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return (time.perf_counter() - started) * 1000, result


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure(store: Store, by_length: dict[int, list[str]]) -> dict[int, dict[str, float]]:
    results = {}
    for size, texts in by_length.items():
        store.calls.list_calls(text=texts[0], limit=50)            # warm the cache and the plan
        page_ms, count_ms, matches = [], [], []
        for text in texts:
            ms, _ = timed(lambda: store.calls.list_calls(text=text, limit=50))
            page_ms.append(ms)
            ms, count = timed(lambda: store.calls.count_calls(text=text))
            count_ms.append(ms)
            matches.append(float(count))                    # type: ignore[arg-type]
        results[size] = {"page_p50": percentile(page_ms, 0.5), "page_p95": percentile(page_ms, 0.95),
                         "count_p50": percentile(count_ms, 0.5), "count_p95": percentile(count_ms, 0.95),
                         "matches": statistics.mean(matches)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--queries", type=int, default=40, help="per query length")
    parser.add_argument("--database-url", default="", help="an empty PostgreSQL database to use")
    args = parser.parse_args()

    call_rows, utterance_rows = make_rows(args.calls, args.utterances)
    by_length = queries(utterance_rows, args.queries)
    print(f"{args.calls} calls x {args.utterances} utterances = {len(utterance_rows)} lines, "
          f"{args.queries} queries per length", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp, contextlib.ExitStack() as stack:
        url = args.database_url
        if not url:
            from servers import postgres_bin_dir, running_postgres
            if postgres_bin_dir() is None:
                sys.exit("PostgreSQL 15 is not installed (Debian package postgresql); or give --database-url")
            url = stack.enter_context(running_postgres("bench-search-pg-")).url()
        rows = []
        for engine in ("sqlite", "postgresql"):
            if engine == "sqlite":
                store = Store(Path(tmp) / "callassist.db")
            else:
                store = Store(PostgresDatabase(url), recordings_dir=Path(tmp) / "recordings")
            seconds = load(store, call_rows, utterance_rows)
            size = index_bytes(store)
            print(f"{engine}: loaded in {seconds:.1f} s, search index {size / 2**20:.1f} MiB", flush=True)
            for length, result in measure(store, by_length).items():
                rows.append((engine, length, result, size))
            store.close()
    print()
    print(f"{'engine':<11} {'chars':>5} {'page p50':>9} {'page p95':>9} {'count p50':>10} {'count p95':>10} "
          f"{'matches':>8} {'index MiB':>10}")
    for engine, length, r, size in rows:
        print(f"{engine:<11} {length:>5} {r['page_p50']:>7.1f}ms {r['page_p95']:>7.1f}ms "
              f"{r['count_p50']:>8.1f}ms {r['count_p95']:>8.1f}ms {r['matches']:>8.0f} {size / 2**20:>10.1f}")


if __name__ == "__main__":
    main()
