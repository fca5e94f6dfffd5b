"""Where capture or a sink worker spends its CPU: py-spy samples it while it drains a backlog.

``python -m bench.profile [--rows N] [--seconds S]`` (needs ``py-spy`` in the venv:
``pip install py-spy``). Writes a backlog of N changes, starts ``cdc capture``, attaches
``py-spy record --format raw`` for S seconds, and prints the functions with the most samples
(self and inclusive, as % of samples). With ``--worker SINK`` (and ``--engine faust|kafka``)
capture first fills a raw topic with N changes, then ``cdc worker --sink SINK`` drains it
and is the one sampled, from its first record on. Raw stacks are kept in the work folder
(load them in speedscope or flamegraph.pl). Not part of ``python -m bench``: sampling costs
CPU, so it must not run while throughput is measured.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.capture import Ours
from bench.common import Bench, log, workload, workload_result
from bench.workload import create_table

ENGINES = ("faust", "kafka", "bare")
#: seconds the bare loop gets to start and reach its first records before it is sampled
BARE_START_S = 3.0


def summarise(raw: Path, top: int) -> str:
    self_ct: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f.strip() for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_ct[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"{total} samples", "", "self %  function"]
    out += [f"{100 * c / total:5.1f}  {f}" for f, c in self_ct.most_common(top)]
    out += ["", "incl %  function"]
    out += [f"{100 * c / total:5.1f}  {f}" for f, c in incl.most_common(top)]
    return "\n".join(out)


def sample(spy: str, pid: int, seconds: float, raw: Path, gil: bool = False) -> None:
    """``gil``: only the thread holding the GIL, so a thread waiting for it (a sink worker
    decodes in threads) is not counted as busy: the shares are of Python CPU."""
    subprocess.run([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                    "--rate", "250", "--nonblocking", "--format", "raw", "--output", str(raw),
                    *(["--gil"] if gil else [])],
                   check=True, capture_output=True)


def profile_worker(bench: Bench, spy: str, a: argparse.Namespace) -> list[Path]:
    """Fill a raw topic once, then drain it with each engine asked for (its own consumer
    group), sampling each from its first record on. Returns the raw stacks, one per engine."""
    from bench.worker import prefill

    opts = argparse.Namespace(txn_rows=50, mix="70,20,10", row_bytes=200)
    table, topic, _, records = prefill(bench, a.rows, opts)
    return [_sample_engine(bench, spy, a, engine, table, topic, records)
            for engine in a.engine.split(",")]


def _sample_engine(bench: Bench, spy: str, a: argparse.Namespace, engine: str, table: str,
                   topic: str, records: int) -> Path:
    from bench.worker import SinkWorker, _counter, worker_env

    work = bench.work / f"worker-{engine}"
    env = worker_env(bench, table, topic, f"p{a.worker[0]}{engine[0]}", work)
    raw = bench.work / f"worker-{a.worker}-{engine}.stacks.txt"
    if engine == "bare":
        # the bare loop has no metrics: it reads from its first poll, so sample after start-up
        work.mkdir(parents=True, exist_ok=True)
        out = (work / "bare.log").open("ab")
        bare = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_worker", "--sink", a.worker,
             "--records", str(records)], env={**os.environ, **env}, stdout=out,
            stderr=subprocess.STDOUT)
        try:
            time.sleep(BARE_START_S)
            log(f"profile: sampling the bare loop ({a.worker}) for {a.seconds:.0f} s")
            sample(spy, bare.pid, a.seconds, raw, a.gil)
        finally:
            bare.kill()
            bare.wait()
            out.close()
        return raw
    proc = SinkWorker(a.worker, {**env, "CDC_WORKER__ENGINE": engine}, work)
    try:
        deadline = time.monotonic() + 120
        while not _counter(proc.snapshot(), "cdc_worker_records_total"):
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError("the worker processed nothing:\n" + proc.tail())
            time.sleep(0.1)
        log(f"profile: sampling the {engine} worker ({a.worker}) for {a.seconds:.0f} s")
        sample(spy, proc.pid, a.seconds, raw, a.gil)
        done = _counter(proc.snapshot(), "cdc_worker_records_total")
        log(f"profile: {done:.0f} of {records} records done when sampling ended")
    finally:
        proc.stop()
    return raw


def _engines(value: str) -> str:
    bad = [e for e in value.split(",") if e not in ENGINES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown engine {bad[0]!r}: choose from "
                                         + ", ".join(ENGINES))
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--rows", type=int, default=600_000)
    p.add_argument("--seconds", type=float, default=12)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--gil", action="store_true",
                   help="sample only the thread holding the GIL (where the Python CPU goes)")
    p.add_argument("--worker", metavar="SINK", help="sample this sink's worker, not capture")
    p.add_argument("--engine", default="faust", type=_engines,
                   help="faust, kafka or bare (the loop of bench.bare_worker); several, "
                        "comma-separated, drain one pre-filled topic in turn")
    a = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    bench = Bench(quick=True, duration=0, work=Path(tempfile.mkdtemp(prefix="cdc-profile-")))
    try:
        if a.worker:
            for raw in profile_worker(bench, spy, a):
                print(f"== {raw.name}")
                print(summarise(raw, a.top))
                log(f"raw stacks: {raw}")
            return 0
        table = f"{bench.schema}.prof"
        create_table(bench.dsn, table)
        pub = bench.publication(bench.name("pub_prof"), table)
        slot = bench.slot(bench.name("slot_prof"))
        prefix = bench.name("prof")
        bench.topic(f"{prefix}.{table}")
        log(f"profile: writing {a.rows} changes")
        workload_result(workload(bench, table, "--rows", str(a.rows)))
        cap = Ours(bench, table, slot, pub, prefix, bench.work)
        raw = bench.work / "capture.stacks.txt"
        try:
            sample(spy, cap.pid, a.seconds, raw, a.gil)
        finally:
            cap.stop()
            bench.drop_slot(slot)
        print(summarise(raw, a.top))
        log(f"raw stacks: {raw}")
    finally:
        bench.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
