"""The dedup seen-set's disk store on its own: lookups as the store grows.

``python -m bench.seenstore [--rows 3000000] [--lookups 100000]`` fills a
:class:`~pipeline.seenstore.RocksSeenStore` (the ``rocksdb://`` store, its real options) with
``--rows`` entries shaped like a worker's (``source|schema.table|{"id":N}`` ->
``partition|ts:commit.lsn``), waits for RocksDB's background work to settle, then looks up
``--lookups`` random rows never seen (what most inserts are) and as many that are there
(updates and deletes), and prints CPU microseconds per put and per lookup and the process's
RSS after each phase. No servers: RocksDB in a temporary folder. Not part of
``python -m bench``: it measures the store, not the pipeline.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from bench.common import proc_status
from pipeline.seenstore import RocksSeenStore


def _key(i: int) -> str:
    return f'bench|bench.items|{{"id":{i}}}'


def _rss_mb() -> float:
    import os

    return round(proc_status(os.getpid()).get("VmRSS", 0) / 1024, 1)


def run(rows: int, lookups: int, settle_s: float = 5.0) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="cdc-seenstore-") as folder:
        store = RocksSeenStore(Path(folder) / "dedup.rocksdb")
        value = "0|1764645000000:1a2b3c4d.1a2b3c4e"
        t0 = time.process_time()
        for i in range(rows):
            store[_key(i)] = value
        out = {"rows": rows, "put_us": (time.process_time() - t0) / rows * 1e6}
        time.sleep(settle_s)  # flushes and compactions in RocksDB's own threads
        out["rss_mb_filled"] = _rss_mb()
        rng = random.Random(7)
        for label, first in (("absent", rows), ("present", 0)):
            keys = [_key(first + rng.randrange(rows)) for _ in range(lookups)]
            t0 = time.process_time()
            for key in keys:
                store.get(key)
            out[f"get_{label}_us"] = (time.process_time() - t0) / lookups * 1e6
        out["rss_mb_end"] = _rss_mb()
        store.close()
    return {k: round(v, 1) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.seenstore", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--rows", type=int, default=3_000_000, help="entries in the store")
    p.add_argument("--lookups", type=int, default=100_000, help="lookups per kind")
    a = p.parse_args(argv)
    result = run(a.rows, a.lookups)
    print(f"rocksdb:// with {result['rows']:,} rows: put {result['put_us']} us, lookup of an "
          f"absent row {result['get_absent_us']} us, of a present row "
          f"{result['get_present_us']} us (CPU per operation); RSS {result['rss_mb_filled']} MB "
          f"filled, {result['rss_mb_end']} MB after the lookups")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
