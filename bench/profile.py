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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.capture import Ours
from bench.common import Bench, log, workload, workload_result
from bench.workload import create_table


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


def sample(spy: str, pid: int, seconds: float, raw: Path) -> None:
    subprocess.run([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                    "--rate", "250", "--nonblocking", "--format", "raw", "--output", str(raw)],
                   check=True, capture_output=True)


def profile_worker(bench: Bench, spy: str, a: argparse.Namespace) -> Path:
    """Fill a raw topic, start one sink worker on it, sample it once records flow."""
    from bench.worker import SinkWorker, _counter, prefill, worker_env

    opts = argparse.Namespace(txn_rows=50, mix="70,20,10", row_bytes=200)
    table, topic, _, records = prefill(bench, a.rows, opts)
    work = bench.work / "worker"
    env = {**worker_env(bench, table, topic, f"p{a.worker[0]}", work),
           "CDC_WORKER__ENGINE": a.engine}
    proc = SinkWorker(a.worker, env, work)
    raw = bench.work / f"worker-{a.worker}-{a.engine}.stacks.txt"
    try:
        deadline = time.monotonic() + 120
        while not _counter(proc.snapshot(), "cdc_worker_records_total"):
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError("the worker processed nothing:\n" + proc.tail())
            time.sleep(0.1)
        log(f"profile: sampling the {a.engine} worker ({a.worker}) for {a.seconds:.0f} s")
        sample(spy, proc.pid, a.seconds, raw)
        done = _counter(proc.snapshot(), "cdc_worker_records_total")
        log(f"profile: {done:.0f} of {records} records done when sampling ended")
    finally:
        proc.stop()
    return raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--rows", type=int, default=600_000)
    p.add_argument("--seconds", type=float, default=12)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--worker", metavar="SINK", help="sample this sink's worker, not capture")
    p.add_argument("--engine", choices=("faust", "kafka"), default="faust")
    a = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    bench = Bench(quick=True, duration=0, work=Path(tempfile.mkdtemp(prefix="cdc-profile-")))
    try:
        if a.worker:
            raw = profile_worker(bench, spy, a)
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
            sample(spy, cap.pid, a.seconds, raw)
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
