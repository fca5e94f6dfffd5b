"""From measurements to the model's stages, predictions and a recommendation; rendered as a
table or as JSON. Pure: the command feeds it what ``measure`` read."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipeline.tune.measure import Measured, SinkFigures
from pipeline.tune.model import (
    UTILISATION_CEILING,
    CapturePrediction,
    Layout,
    Recommendation,
    SinkCosts,
    SinkPrediction,
    predict_capture,
    predict_sink,
    recommend,
    saturates_first,
)

#: A per-change cost small enough to leave capture out of the model when it was not read.
_UNMEASURED_CAPTURE_S = 1e-9


@dataclass
class Advice:
    measured: Measured
    current: Layout  # partitions and batch settings now (workers per sink: in ``now``)
    rate_now: float  # changes/s measured
    rate: float  # changes/s asked about (--rate, else rate_now)
    records_per_change: float
    costs: dict[str, SinkCosts]
    capture_now: CapturePrediction | None
    now: dict[str, SinkPrediction]  # model at the measured rate and current layout
    capture_at: CapturePrediction | None
    at: dict[str, SinkPrediction]  # model at ``rate``, current layout
    recommendation: Recommendation
    first: tuple[str, float]  # stage saturating first, changes/s


def sink_costs(s: SinkFigures) -> SinkCosts | None:
    """A batch's cost for one sink: the sink's write time per write (round trip, bulk
    request) as the fixed part, the rest of the workers' busy time (decoding, ordering,
    dedup, acks) per record as the part per record."""
    records = s.records_per_s * s.seconds
    if records <= 0:
        return None
    per_batch = s.write_s / s.writes if s.writes else 0.0
    per_record = max(s.busy_s - s.write_s, 0.0) / records
    if per_batch + per_record <= 0:
        return None
    return SinkCosts(per_batch, per_record)


def advise(measured: Measured, partitions: int, batch_size: int, batch_wait_s: float,
           target_s: float, rate: float | None = None) -> Advice:
    sinks = {name: c for name, s in measured.sinks.items() if (c := sink_costs(s)) is not None}
    sink_rates = [measured.sinks[n].records_per_s for n in sinks]
    rate_now = measured.rate or max(sink_rates, default=0.0)
    records_per_change = (sum(sink_rates) / len(sink_rates) / rate_now
                          if sink_rates and rate_now else 1.0)
    records_per_change = max(records_per_change, 1e-9)
    want = rate if rate is not None else rate_now
    current = Layout(partitions, 1, batch_size, batch_wait_s)

    capture_now = capture_at = None
    if measured.capture_cpu_s is not None and measured.rate > 0:
        per_change = max(measured.capture_cpu_s / (measured.rate * measured.seconds), 1e-9)
        capture_now = predict_capture(rate_now, per_change, rate_now, measured.capture_p99_s)
        capture_at = predict_capture(want, per_change, rate_now, measured.capture_p99_s)
    model_capture = capture_at or predict_capture(want, _UNMEASURED_CAPTURE_S, want, None)

    def layout(name: str) -> Layout:
        return Layout(partitions, measured.sinks[name].workers, batch_size, batch_wait_s)

    now = {n: predict_sink(measured.sinks[n].records_per_s, c, layout(n))
           for n, c in sinks.items()}
    at = {n: predict_sink(want * records_per_change, c, layout(n)) for n, c in sinks.items()}
    rec = recommend(want * records_per_change, sinks, current, target_s, model_capture)
    stage, records_rate = saturates_first(
        capture_at or predict_capture(want, _UNMEASURED_CAPTURE_S, want, None),
        [(n, p) for n, p in at.items()])
    first_rate = records_rate if stage == "capture" else records_rate / records_per_change
    return Advice(measured, current, rate_now, want, records_per_change, sinks, capture_now,
                  now, capture_at, at, rec, (stage, first_rate))


# -- rendering ------------------------------------------------------------------------------
def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return "inf"
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def _pct(x: float | None) -> str:
    return "-" if x is None else ("saturated" if x >= 1 else f"{100 * x:.0f}%")


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def render(a: Advice) -> str:
    m = a.measured
    per_table = ", ".join(f"{t} {v:,.0f}" for t, v in sorted(m.changes_per_s.items()))
    lines = [f"measured for {m.seconds:.0f} s from {m.processes} process(es): "
             f"{a.rate_now:,.0f} changes/s" + (f" ({per_table})" if per_table else "")]
    lines += [f"not answering: {u}" for u in m.down]
    rows = [["stage", "workers", "rate/s", "cost", "busy meas/model", "p99 meas/model",
             "saturates at"]]
    if a.capture_now is not None:
        rows.append(["capture", "1", f"{a.rate_now:,.0f}",
                     f"{1000 / a.capture_now.queue.service_rate:.3f} ms CPU/change",
                     f"{_pct(a.capture_now.utilisation)} / {_pct(a.capture_now.utilisation)}",
                     f"{_ms(m.capture_p99_s)} / {_ms(a.capture_now.p99_s)}",
                     f"{a.capture_now.saturation_rate:,.0f} changes/s"])
    cap_p99 = a.capture_now.p99_s if a.capture_now else 0.0
    for name, p in a.now.items():
        s, c = m.sinks[name], a.costs[name]
        rows.append([f"sink {name}", str(s.workers), f"{s.records_per_s:,.0f} rec",
                     f"{c.per_batch_s * 1000:.2f} ms/batch + {c.per_event_s * 1000:.3f} "
                     f"ms/record, batches of {s.mean_batch:,.0f}/{p.batch_events:,.0f}",
                     f"{_pct(s.busy)} / {_pct(p.utilisation)}",
                     f"{_ms(s.p99_s)} / {_ms(cap_p99 + p.p99_s)}",
                     f"{p.saturation_rate / a.records_per_change:,.0f} changes/s"])
    lines += _table(rows)
    stage, rate = a.first
    lines.append(f"saturates first: {stage} at ~{rate:,.0f} changes/s"
                 + (f" ({rate / a.rate_now:.1f}x the measured rate)" if a.rate_now else ""))
    lines += ["", *render_recommendation(a)]
    return "\n".join(lines)


def render_recommendation(a: Advice) -> list[str]:
    r = a.recommendation
    cur = a.current
    lines = [f"for p99 freshness <= {_ms(r.target_s)} at {a.rate:,.0f} changes/s"
             f"{' (what-if)' if a.rate != a.rate_now else ''}:",
             f"  kafka.partitions {r.partitions} (now {cur.partitions}), worker.batch_size "
             f"{r.batch_size} (now {cur.batch_size}), worker.batch_wait_ms "
             f"{r.batch_wait_s * 1000:g} (now {cur.batch_wait_s * 1000:g})"]
    cap = a.capture_at
    rows = [["stage", "workers", "batch", "busy", "load", "p99 freshness"]]
    if cap is not None:
        rows.append(["capture", "1 (one slot)", "-", _pct(cap.utilisation),
                     _pct(cap.utilisation), _ms(cap.p99_s)])
    cap_p99 = r.capture.p99_s
    for name, p in r.sinks.items():
        rows.append([f"sink {name}",
                     f"{p.layout.workers} (now {a.measured.sinks[name].workers})",
                     f"{p.batch_events:,.0f}", _pct(p.utilisation), _pct(p.load),
                     _ms(cap_p99 + p.p99_s)])
    lines += ["  " + line for line in _table(rows)]
    total = sum(p.layout.workers for p in r.sinks.values())
    if r.met:
        lines.append(f"verdict: the target is met with {total} worker process(es), every "
                     f"stage under {UTILISATION_CEILING:.0%} load")
    elif cap is not None and cap.utilisation > UTILISATION_CEILING:
        lines.append(f"verdict: not met: capture is {_pct(cap.utilisation)} busy at this "
                     f"rate and has one process per slot; split the tables over more "
                     f"captures (slots)")
    else:
        lines.append("verdict: not met by any layout tried; the best is shown (capture's "
                     f"p99 alone is {_ms(cap_p99)})")
    if r.partitions > cur.partitions:
        lines.append("  more partitions move keys to other partitions: stop capture, let "
                     "the workers drain, add partitions, then restart (per-row order holds "
                     "only within a partition)")
    lines.append("model: M/M/1 queues of batches per worker (Kafka gives each partition to "
                 "one worker), Poisson arrivals, exponential service, linear batch cost; "
                 "p99s of stages added (an upper bound). An approximation: check it.")
    return lines


def to_json(a: Advice) -> dict[str, Any]:
    def sink(p: SinkPrediction) -> dict[str, Any]:
        return {"workers": p.layout.workers, "partitions": p.layout.partitions,
                "batch_size": p.layout.batch_size, "batch_wait_ms": p.layout.batch_wait_s * 1e3,
                "records_per_s": p.rate, "batch_events": p.batch_events,
                "busy": p.utilisation, "load": p.load, "p99_ms": _json_ms(p.p99_s),
                "saturation_changes_per_s": p.saturation_rate / a.records_per_change}

    def capture(c: CapturePrediction | None) -> dict[str, Any] | None:
        if c is None:
            return None
        return {"rate": c.rate, "busy": c.utilisation, "p99_ms": _json_ms(c.p99_s),
                "saturation_changes_per_s": c.saturation_rate}

    m, r = a.measured, a.recommendation
    cap_p99 = r.capture.p99_s
    return {
        "measured": {
            "seconds": m.seconds, "processes": m.processes, "not_answering": m.down,
            "changes_per_s": m.rate, "per_table": m.changes_per_s,
            "capture_p99_ms": _json_ms(m.capture_p99_s),
            "sinks": {n: {"workers": s.workers, "records_per_s": s.records_per_s,
                          "busy": s.busy, "mean_batch": s.mean_batch,
                          "p99_ms": _json_ms(s.p99_s), "consumer_lag": s.consumer_lag}
                      for n, s in m.sinks.items()},
        },
        "costs": {n: {"per_batch_ms": c.per_batch_s * 1e3, "per_record_ms": c.per_event_s * 1e3}
                  for n, c in a.costs.items()},
        "model_now": {"capture": capture(a.capture_now),
                      "sinks": {n: sink(p) for n, p in a.now.items()}},
        "rate": a.rate,
        "model_at_rate": {"capture": capture(a.capture_at),
                          "sinks": {n: {**sink(p), "freshness_p99_ms": _json_ms(
                              (a.capture_at.p99_s if a.capture_at else 0.0) + p.p99_s)}
                                    for n, p in a.at.items()}},
        "saturates_first": {"stage": a.first[0], "changes_per_s": a.first[1]},
        "recommendation": {
            "target_p99_ms": r.target_s * 1e3, "met": r.met, "partitions": r.partitions,
            "batch_size": r.batch_size, "batch_wait_ms": r.batch_wait_s * 1e3,
            "sinks": {n: {**sink(p), "freshness_p99_ms": _json_ms(cap_p99 + p.p99_s)}
                      for n, p in r.sinks.items()},
        },
    }


def _json_ms(seconds: float | None) -> float | None:
    if seconds is None or math.isinf(seconds):
        return None
    return round(seconds * 1000, 3)
