"""The queueing model behind ``cdc tune``: pure functions, no I/O.

Two kinds of stage, each a queue whose utilisation is rho = lambda / (c * mu):

* **capture**: one process (c = 1) serving row changes; its service time per change is the
  CPU it spends per change (measured).
* **a sink**: c worker processes, each serving *batches* of the events on its share of the
  raw topics' partitions. Kafka gives each partition to one worker, so the workers do not
  share one queue: each is its own single-server queue fed by its share (the most loaded
  worker, ceil(P/c) of P partitions, decides). A batch costs ``per_batch_s + per_event_s * b``.

Batching: a worker asks for up to ``batch_size`` events and waits at most ``batch_wait``;
events that arrive while it writes are taken by the next batch. At steady state a cycle is
one wait plus one write, and a batch holds what arrived during the cycle (capped at
``batch_size``): b = lambda_w * (wait + S(b)). That sets the batch rate lambda_w / b, and
each batch is a job of an M/M/1 queue (M/M/c with c = 1).

Approximations, said once: arrivals are Poisson and service times exponential (M/M/c), a
batch's write time is linear in its size, partitions carry equal shares (no hot keys), and
the end-to-end p99 is the sum of the stages' p99s (an upper bound of the p99 of the sum).
The sojourn-time tail of M/M/c itself is exact (Erlang C waiting mixed with the service
time), not the usual single-exponential approximation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import cached_property

#: Utilisation a recommendation keeps every stage under (room for bursts and rebalances).
UTILISATION_CEILING = 0.8
BATCH_SIZES = (50, 100, 200, 500, 1000, 2000, 5000)
BATCH_WAITS_S = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
MAX_PARTITIONS = 64


# -- M/M/c ----------------------------------------------------------------------------------
def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in M/M/c (Erlang C); ``offered`` = lambda/mu.
    1 when the queue is unstable (offered >= servers)."""
    if servers < 1:
        raise ValueError("servers must be at least 1")
    if offered <= 0:
        return 0.0
    if offered >= servers:
        return 1.0
    blocked = 1.0  # Erlang B by its recurrence: stable for any number of servers
    for k in range(1, servers + 1):
        blocked = offered * blocked / (k + offered * blocked)
    rho = offered / servers
    return blocked / (1 - rho + rho * blocked)


@dataclass(frozen=True)
class Queue:
    """Figures of one M/M/c queue. Times in seconds; infinite when unstable."""

    arrival: float
    service_rate: float
    servers: int
    utilisation: float
    wait_probability: float
    mean_wait_s: float
    mean_sojourn_s: float

    @property
    def stable(self) -> bool:
        return self.utilisation < 1

    def sojourn_tail(self, t: float) -> float:
        """P(sojourn > t): no wait (1 - C) or an Exp(c*mu - lambda) wait, plus an
        Exp(mu) service."""
        if not self.stable:
            return 1.0
        if t <= 0:
            return 1.0
        mu = self.service_rate
        theta = self.servers * mu - self.arrival
        c = self.wait_probability
        service = math.exp(-mu * t)
        if abs(theta - mu) < 1e-9 * mu:
            waited = math.exp(-mu * t) * (1 + mu * t)
        else:
            waited = (theta * math.exp(-mu * t) - mu * math.exp(-theta * t)) / (theta - mu)
        return (1 - c) * service + c * waited

    def sojourn_quantile(self, q: float = 0.99) -> float:
        if not self.stable:
            return math.inf
        return quantile(self.sojourn_tail, q, hint=self.mean_sojourn_s)


def mmc(arrival: float, service_rate: float, servers: int = 1) -> Queue:
    """The M/M/c queue with arrival rate ``arrival`` and ``servers`` servers of rate
    ``service_rate`` (jobs per second each)."""
    if service_rate <= 0:
        raise ValueError("service_rate must be positive")
    offered = arrival / service_rate
    rho = offered / servers
    if rho >= 1:
        return Queue(arrival, service_rate, servers, rho, 1.0, math.inf, math.inf)
    c = erlang_c(servers, offered)
    wait = c / (servers * service_rate - arrival)
    return Queue(arrival, service_rate, servers, rho, c, wait, wait + 1 / service_rate)


def quantile(tail: Callable[[float], float], q: float, hint: float = 1.0,
             rel: float = 1e-7) -> float:
    """The t with tail(t) = 1 - q, for a decreasing tail, by bisection (to ``rel``)."""
    target = 1 - q
    hi = max(hint, 1e-6)
    while tail(hi) > target:
        hi *= 2
        if hi > 1e9:
            return math.inf
    lo = 0.0
    while hi - lo > rel * hi:
        mid = (lo + hi) / 2
        if tail(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def with_uniform_delay(tail: Callable[[float], float], width: float,
                       steps: int = 32) -> Callable[[float], float]:
    """The tail of X + U, U uniform on [0, width] and independent of X (the wait for a
    batch to close), by the midpoint rule."""
    if width <= 0:
        return tail

    def delayed(t: float) -> float:
        return sum(tail(t - (i + 0.5) * width / steps) for i in range(steps)) / steps

    return delayed


# -- the pipeline's stages -----------------------------------------------------------------
@dataclass(frozen=True)
class SinkCosts:
    """What one batch costs a worker: a fixed part and a part per event (seconds)."""

    per_batch_s: float
    per_event_s: float

    def __post_init__(self) -> None:
        if self.per_batch_s < 0 or self.per_event_s < 0 or (
                self.per_batch_s + self.per_event_s) <= 0:
            raise ValueError(f"a batch must cost something: {self}")

    def batch_s(self, events: float) -> float:
        return self.per_batch_s + self.per_event_s * events


@dataclass(frozen=True)
class Layout:
    """The knobs: raw-topic partitions, worker processes for the sink, batch size and wait."""

    partitions: int
    workers: int
    batch_size: int
    batch_wait_s: float


@dataclass(frozen=True)
class SinkPrediction:
    layout: Layout
    rate: float  # changes/s into the sink (all workers)
    worker_rate: float  # changes/s of the most loaded worker
    batch_events: float
    fill_s: float  # how long a batch stays open
    queue: Queue
    saturation_rate: float  # changes/s at which the most loaded worker reaches rho = 1

    @cached_property
    def p99_s(self) -> float:
        """p99 of the batch's open time plus its sojourn (capture not counted)."""
        if not self.queue.stable:
            return math.inf
        return quantile(with_uniform_delay(self.queue.sojourn_tail, self.fill_s), 0.99,
                        hint=self.queue.mean_sojourn_s + self.fill_s, rel=1e-3)

    @property
    def utilisation(self) -> float:
        """Busy share of the most loaded worker (the batch queue's rho)."""
        return self.queue.utilisation

    @property
    def load(self) -> float:
        """Rate over the rate the sink saturates at (full batches): how close to the edge.
        Small batches keep a worker busy without it being near its limit."""
        return self.rate / self.saturation_rate


def worker_share(partitions: int, workers: int) -> float:
    """Share of the events the most loaded worker takes (Kafka gives whole partitions;
    workers beyond the partition count sit idle)."""
    active = min(workers, partitions)
    return math.ceil(partitions / active) / partitions


def batch_events(worker_rate: float, costs: SinkCosts, layout: Layout) -> tuple[float, float]:
    """(events per batch, seconds the batch stays open) at steady state."""
    if worker_rate <= 0:
        return 1.0, layout.batch_wait_s
    cap = layout.batch_size
    if worker_rate * costs.per_event_s < 1:
        b = worker_rate * (layout.batch_wait_s + costs.per_batch_s) / (
            1 - worker_rate * costs.per_event_s)
        if b <= cap:
            return max(1.0, b), layout.batch_wait_s
    # full batches: the wait ends early, when batch_size events are there
    fill = max(0.0, min(layout.batch_wait_s, cap / worker_rate - costs.batch_s(cap)))
    return float(cap), fill


def predict_sink(rate: float, costs: SinkCosts, layout: Layout) -> SinkPrediction:
    worker_rate = rate * worker_share(layout.partitions, layout.workers)
    b, fill = batch_events(worker_rate, costs, layout)
    queue = mmc(worker_rate / b, 1 / costs.batch_s(b), 1)
    return SinkPrediction(layout, rate, worker_rate, b, fill, queue,
                          sink_saturation_rate(costs, layout))


def sink_saturation_rate(costs: SinkCosts, layout: Layout) -> float:
    """Changes/s at which the most loaded worker is busy all the time: full batches,
    rho = lambda_w * S(B) / B = 1."""
    per_worker = layout.batch_size / costs.batch_s(layout.batch_size)
    return per_worker / worker_share(layout.partitions, layout.workers)


@dataclass(frozen=True)
class CapturePrediction:
    rate: float
    queue: Queue
    p99_s: float  # measured p99 now plus the queueing the model adds at this rate

    @property
    def utilisation(self) -> float:
        return self.queue.utilisation

    @property
    def saturation_rate(self) -> float:
        return self.queue.service_rate


def predict_capture(rate: float, per_change_s: float, measured_rate: float,
                    measured_p99_s: float | None) -> CapturePrediction:
    """Capture is one process: an M/M/1 queue of changes. Its commit-to-Kafka p99 is mostly
    fixed cost (the commit reaching the slot, the producer's round trip): the measured p99
    at the measured rate, plus what queueing adds between that rate and ``rate``."""
    mu = 1 / per_change_s
    queue = mmc(rate, mu, 1)
    model_p99 = queue.sojourn_quantile()
    if measured_p99_s is None:
        return CapturePrediction(rate, queue, model_p99)
    now = mmc(measured_rate, mu, 1).sojourn_quantile()
    if math.isinf(now):
        return CapturePrediction(rate, queue, model_p99)
    return CapturePrediction(rate, queue, max(measured_p99_s + model_p99 - now, 0.0))


# -- recommendation --------------------------------------------------------------------------
@dataclass(frozen=True)
class Recommendation:
    target_s: float
    rate: float
    met: bool  # every sink's predicted p99 within the target, every stage under the ceiling
    partitions: int
    batch_size: int
    batch_wait_s: float
    sinks: dict[str, SinkPrediction]
    capture: CapturePrediction


def partition_candidates(current: int) -> list[int]:
    """Partitions can only grow: the current count, then counts that divide evenly among
    more workers."""
    out = {current}
    for n in (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64):
        if current < n <= MAX_PARTITIONS:
            out.add(n)
    return sorted(out)


def _fewest_workers(rate: float, costs: SinkCosts, partitions: int, size: int, wait: float,
                    target_s: float, capture_p99: float) -> SinkPrediction:
    """The prediction with the fewest workers that meets the target under the ceiling
    (else the one with a worker per partition). More workers never raise a worker's share,
    so both the load and the p99 fall with the count: bisect it."""
    def at(workers: int) -> SinkPrediction:
        return predict_sink(rate, costs, Layout(partitions, workers, size, wait))

    most = at(partitions)
    if most.load > UTILISATION_CEILING or capture_p99 + most.p99_s > target_s:
        return most
    lo, hi = 1, partitions  # hi meets the target
    while lo < hi:
        mid = (lo + hi) // 2
        p = at(mid)
        # the load is cheap, the p99 is not: look at it only under the ceiling
        if p.load <= UTILISATION_CEILING and capture_p99 + p.p99_s <= target_s:
            hi = mid
        else:
            lo = mid + 1
    return at(hi)


def recommend(rate: float, sinks: dict[str, SinkCosts], current: Layout, target_s: float,
              capture: CapturePrediction) -> Recommendation:
    """Partitions, workers per sink and one batch size/wait (the settings file has one)
    for ``target_s`` p99 freshness at ``rate`` changes/s: the fewest workers in all, then
    the fewest partitions, then the lowest p99. When no layout meets it: the lowest p99
    (to within 10 %) with the fewest workers."""
    def ok(p: SinkPrediction) -> bool:
        return p.load <= UTILISATION_CEILING and capture.p99_s + p.p99_s <= target_s

    best: tuple[tuple[float, ...], Recommendation] | None = None
    for partitions in partition_candidates(current.partitions):
        for size in BATCH_SIZES:
            for wait in BATCH_WAITS_S:
                preds = {name: _fewest_workers(rate, costs, partitions, size, wait, target_s,
                                               capture.p99_s)
                         for name, costs in sinks.items()}
                met = all(ok(p) for p in preds.values())
                worst = max((p.p99_s for p in preds.values()), default=0.0)
                workers = sum(p.layout.workers for p in preds.values())
                # unmet: the lowest p99 (to within 10 %), then the fewest workers
                key = (0, workers, partitions, worst, size) if met else (
                    1, _log_bucket(worst), workers, partitions, size)
                if best is None or key < best[0]:
                    best = key, Recommendation(target_s, rate, met, partitions, size, wait,
                                               preds, capture)
    assert best is not None
    rec = best[1]
    if capture.utilisation > UTILISATION_CEILING:
        rec = replace(rec, met=False)
    return rec


def _log_bucket(seconds: float) -> float:
    return math.inf if math.isinf(seconds) else math.ceil(math.log(max(seconds, 1e-6), 1.1))


def saturates_first(capture: CapturePrediction,
                    sinks: Iterable[tuple[str, SinkPrediction]]) -> tuple[str, float]:
    """The stage that reaches rho = 1 at the lowest change rate, and that rate."""
    stages = [("capture", capture.saturation_rate)]
    stages += [(f"sink {name}", p.saturation_rate) for name, p in sinks]
    return min(stages, key=lambda s: s[1])
