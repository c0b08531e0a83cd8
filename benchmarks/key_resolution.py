"""Key resolution: the cost of naming a referenced row by its natural key in the drain.

Builds the on-disk id -> natural key index with N rows (as install seeds it), then times
lookups through the LRU cache: hits (the key is cached) and misses (read from the index
file on disk). Prints hit and miss counts and the median cost of each, beside the 1.45 ms
per lookup of the system nkdaemon replaces.

    python benchmarks/key_resolution.py [--rows 200000] [--lookups 200000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from nkdaemon.repository.state import StateStore

LEGACY_MS = 1.45
TABLE = 7


def median_ns(samples: list[int]) -> float:
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--cache", type=int, default=100_000)
    args = parser.parse_args()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.db"
        store = StateStore(path, cache_size=args.cache)
        store.put_many(TABLE, ((i, (f"user{i:07d}",)) for i in range(1, args.rows + 1)))
        store.commit()
        store.close()

        store = StateStore(path, cache_size=args.cache)  # cold cache, index on disk
        hot = list(range(1, args.cache // 2))
        for sid in hot:
            store.get(TABLE, sid)  # warm: these will hit
        store.stats.hits = store.stats.misses = 0
        hit_ns: list[int] = []
        miss_ns: list[int] = []
        clock = time.perf_counter_ns
        cold = iter(
            rng.sample(
                range(args.cache, args.rows + 1), min(args.lookups // 4, args.rows - args.cache)
            )
        )
        for i in range(args.lookups):
            if i % 4 == 0:
                sid = next(cold, None)
                if sid is None:
                    continue
                start = clock()
                store.get(TABLE, sid)
                miss_ns.append(clock() - start)
            else:
                sid = hot[rng.randrange(len(hot))]
                start = clock()
                store.get(TABLE, sid)
                hit_ns.append(clock() - start)
        overhead = []
        for _ in range(10_000):
            start = clock()
            overhead.append(clock() - start)
        timer = median_ns(overhead)
        store.close()
    hit = median_ns(hit_ns) - timer
    miss = median_ns(miss_ns) - timer
    print(f"index: {args.rows} keys on disk, LRU cache of {args.cache} entries")
    print(f"hits    {store.stats.hits:>8}   median {hit / 1000:8.2f} µs")
    print(f"misses  {store.stats.misses:>8}   median {miss / 1000:8.2f} µs (SQLite index on disk)")
    print(f"timer overhead {timer:.0f} ns subtracted; legacy system: {LEGACY_MS} ms per lookup")
    print(
        f"ratios: a hit is {LEGACY_MS * 1e6 / hit:,.0f}x faster than the legacy lookup, "
        f"a miss {LEGACY_MS * 1e6 / miss:,.0f}x; target: a hit well under 10 µs"
    )


if __name__ == "__main__":
    main()
