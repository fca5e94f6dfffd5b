"""``cdc demo``: the whole pipeline on the local stack, with a workload and a summary."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import click
import psycopg2
import redis

from pipeline import stack
from pipeline.config import load_settings
from pipeline.harness import (
    PipelineProcess,
    group_stable,
    index_documents,
    project,
    slot_active,
    table_rows,
    wait_until,
)
from pipeline.metrics import quantiles_between, read_snapshots
from pipeline.sinks.registry import sink_names
from pipeline.sources.postgres.slot import ReplicationSlot

CHANGES = 500  # transactions in the steady phase, whose latency the summary reports
RATE = 100.0  # their offered rate, transactions per second
CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"

SCHEMA = """
DROP TABLE IF EXISTS orders, products, customers;
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text,
                        updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE products (id serial PRIMARY KEY, sku text UNIQUE NOT NULL, name text NOT NULL,
                       price numeric(10,2) NOT NULL, tags text[] NOT NULL DEFAULT '{}',
                       description text);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int NOT NULL, product_id int NOT NULL,
                     quantity int NOT NULL, total numeric(12,2) NOT NULL, status text NOT NULL,
                     created_at timestamptz NOT NULL DEFAULT now());
"""

#: What each index must hold: (index suffix, query returning (id, expected document)).
EXPECTED = {
    "public.customers": (
        ("id", "name", "email"),
        "SELECT id::text, jsonb_build_object('id', id, 'name', name, 'email', email) "
        "FROM customers",
    ),
    "public.products": (
        ("id", "sku", "name", "price", "tags"),
        "SELECT id::text, jsonb_build_object('id', id, 'sku', sku, 'name', name, "
        "'price', price::text, 'tags', to_jsonb(tags)) FROM products",
    ),
    "public.orders": (
        ("id", "customer_id", "product_id", "quantity", "total", "status"),
        "SELECT id::text, jsonb_build_object('id', id, 'customer_id', customer_id, "
        "'product_id', product_id, 'quantity', quantity, 'total', total::text, "
        "'status', status) FROM orders",
    ),
}


def _workload_inserts(conn: Any, rows: int, rng: random.Random) -> None:
    with conn, conn.cursor() as cur:
        for i in range(rows):
            cur.execute(
                "INSERT INTO customers (name, email) VALUES (%s, %s)",
                (f"Customer {i}", f"c{i}@example.com"),
            )
            cur.execute(
                "INSERT INTO products (sku, name, price, tags) VALUES (%s, %s, %s, %s)",
                (f"SKU-{i:05d}", f"Product {i}", f"{rng.uniform(1, 500):.2f}",
                 rng.sample(["red", "blue", "sale", "new", "eco"], 2)),
            )
    with conn, conn.cursor() as cur:
        for _ in range(rows):
            qty = rng.randint(1, 5)
            cur.execute(
                "INSERT INTO orders (customer_id, product_id, quantity, total, status) "
                "VALUES (%s, %s, %s, %s, 'new')",
                (rng.randint(1, rows), rng.randint(1, rows), qty, f"{qty * 9.99:.2f}"),
            )


def _workload_changes(
    conn: Any, rows: int, rng: random.Random, transactions: int, rate: float
) -> dict[str, list[int]]:
    """Small transactions (an update or a delete each) at a fixed offered rate, the way an
    application writes; returns the ids touched per table."""
    touched: dict[str, list[int]] = {"customers": [], "products": [], "orders": []}
    statements = {
        "products": "UPDATE products SET price = price * 1.1, name = name || '*' WHERE id = %s",
        "customers": "UPDATE customers SET email = 'changed' || id || '@example.com' "
                     "WHERE id = %s",
        "orders": "UPDATE orders SET status = 'shipped' WHERE id = %s",
    }
    deleted: set[int] = set()
    started = time.monotonic()
    for n in range(transactions):
        table = rng.choice(("products", "customers", "orders", "orders"))
        row = rng.randint(1, rows)
        with conn, conn.cursor() as cur:
            if table == "orders" and rng.random() < 0.3 and row not in deleted:
                cur.execute("DELETE FROM orders WHERE id = %s", (row,))
                deleted.add(row)
            else:
                cur.execute(statements[table], (row,))
        touched[table].append(row)
        pause = started + (n + 1) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return touched


def _warm_cache(client: redis.Redis, rows: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(1, rows + 1):
        pipe.set(f"customer:{i}", "cached")
        pipe.set(f"product:{i}", "cached")
        pipe.set(f"order:{i}", "cached")
    pipe.execute()


def _index_matches(settings: Any, dsn: str) -> bool:
    assert settings.elasticsearch is not None
    for table, (columns, query) in EXPECTED.items():
        expected = project(table_rows(dsn, query), columns)
        actual = project(index_documents(settings.elasticsearch.url,
                                         settings.elasticsearch.index_for(table)), columns)
        if expected != actual:
            return False
    return True


def _counter(snapshots: dict[str, Any], name: str) -> float:
    return sum(
        v for snap in snapshots.values() for k, v in snap.get("counters", {}).items()
        if k == name or k.startswith(name + "{")
    )


def _drop_slot(slot: ReplicationSlot, settings: Any) -> None:
    """Drop the demo's slot on purpose, and what Kafka keeps about it (else the next run's
    capture would stop: a slot it had confirmed positions through is gone)."""
    from pipeline.metrics import Metrics
    from pipeline.sources.postgres.source import PostgresSource

    slot.drop()
    PostgresSource(settings.postgres, settings.kafka, Metrics("demo")).forget_positions()


def _clean_up(settings: Any, dsn: str, keep: bool) -> None:
    """Leave nothing behind: the slot and publication, the positions kept in Kafka, and
    (unless ``keep``) this run's topics and indices (`cdc teardown --topics --indices`)."""
    from pipeline.teardown import execute, plan

    wait_until(lambda: not slot_active(dsn, settings.postgres.slot), 30)
    found = plan(settings, topics=not keep, indices=not keep)
    execute(settings, found)
    click.echo("\ncleaned up (`cdc teardown`):\n" + found.render(done=True))
    if keep:
        click.echo("kept this run's topics and indices (--keep)")


def run_demo(keep_running: bool, rows: int, keep: bool = False) -> int:
    """``keep``: leave this run's topics and indices (else deleted with its slot)."""
    was_running = stack.load() is not None
    click.echo("starting the local stack (first run installs it; later runs reuse it)...")
    info = stack.up()
    run = time.strftime("%Y%m%d%H%M%S")
    work = info.state_dir / "demo" / run
    env = {
        **stack.env_vars(info),
        "CDC_CONFIG": str(CONFIG),
        "CDC_KAFKA__TOPIC_PREFIX": f"demo{run}",
        "CDC_WORKER__APP_ID": f"demo-worker-{run}",
        "CDC_WORKER__DEAD_LETTER_TOPIC": f"demo{run}.dead-letter",
        "CDC_ELASTICSEARCH__INDEX_PREFIX": f"demo{run}.",
        "CDC_METRICS__SNAPSHOT_DIR": str(work / "metrics"),
        "CDC_WORKER_DATADIR": str(work / "worker-data"),
    }
    settings = load_settings(CONFIG, env)
    dsn = settings.postgres.dsn.get_secret_value()
    slot = ReplicationSlot(settings.postgres)
    _drop_slot(slot, settings)
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
    assert settings.redis is not None
    cache = redis.Redis.from_url(settings.redis.url.get_secret_value())
    rng = random.Random(7)
    click.echo(f"inserting {rows} rows per table before capture starts (existing rows)")
    _workload_inserts(conn, rows, rng)
    procs = [
        PipelineProcess("capture", env, work / "capture.log"),
        PipelineProcess("worker", env, work / "worker.log"),
    ]
    ok = False
    try:
        if not wait_until(lambda: slot_active(dsn, settings.postgres.slot), 60):
            raise click.ClickException("capture did not start:\n" + procs[0].tail(30))
        groups = [settings.group_id(name) for name in sink_names(settings)]
        if not wait_until(lambda: all(group_stable(settings.kafka, g) for g in groups), 60, 0.5):
            raise click.ClickException("worker did not start:\n" + procs[1].tail(30))
        click.echo(f"capture and worker started (logs in {work}); capture read the existing "
                   "rows first (initial snapshot, op r), then streams")
        if not wait_until(lambda: _index_matches(settings, dsn), 120, 0.5):
            raise click.ClickException("the existing rows did not reach Elasticsearch in "
                                       "120 s:\n" + "\n".join(p.tail(15) for p in procs))
        click.echo(f"the {rows} existing rows of each table are in the index (snapshot)")
        _warm_cache(cache, rows)
        time.sleep(settings.metrics.interval_s * 1.5)  # let every process write a snapshot
        before = read_snapshots(work / "metrics")
        click.echo(f"cache warmed; now the stream: {CHANGES} small transactions "
                   f"(updates, deletes) at {RATE:.0f}/s")
        touched = _workload_changes(conn, rows, rng, CHANGES, RATE)
        stale = [f"customer:{i}" for i in touched["customers"]] + \
                [f"product:{i}" for i in touched["products"]] + \
                [f"order:{i}" for i in touched["orders"]]
        ok = wait_until(
            lambda: _index_matches(settings, dsn) and cache.exists(*stale) == 0, 120, 0.2
        )
        untouched = [f"customer:{i}" for i in range(1, rows + 1) if i not in touched["customers"]]
        kept = cache.exists(*untouched) if untouched else 0
        click.echo(
            "index equals tables and changed rows' cache keys are gone"
            if ok else "TIMEOUT: the sinks did not converge in 120 s"
        )
        click.echo(f"cache keys of untouched customers still cached: {kept}/{len(untouched)}")
    finally:
        if not keep_running:
            for proc in procs:
                proc.stop()
    _summary(work / "metrics", before if ok else {})
    if keep_running:
        click.echo(f"still running (capture pid {procs[0].proc.pid}, worker pid "
                   f"{procs[1].proc.pid}); `cdc stack down` stops the servers")
        click.echo("\n".join(f"export {k}='{v}'" for k, v in env.items()))
    else:
        _clean_up(settings, dsn, keep)
        if not was_running:
            stack.down()
    return 0 if ok else 1


def _latency(snaps: dict[str, Any], before: dict[str, Any], name: str) -> str:
    def buckets(snapshots: dict[str, Any]) -> dict[str, int] | None:
        for snap in snapshots.values():
            if name in snap.get("latency_ms", {}):
                return dict(snap["latency_ms"][name].get("buckets", {}))
        return None

    after = buckets(snaps)
    if not after:
        return "n/a"
    count, (p50, p99) = quantiles_between(buckets(before), after)
    if not count or p50 is None or p99 is None:
        return "n/a"
    return f"p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   (n={count})"


def _summary(metrics_dir: Path, before: dict[str, Any]) -> None:
    """Counts over the whole run; latencies over the steady phase (after the initial load)."""
    snaps = read_snapshots(metrics_dir)
    indexed = _counter(snaps, 'cdc_sink_events_total{sink="search"}')
    invalidated = _counter(snaps, 'cdc_sink_events_total{sink="cache"}')
    click.echo("\nsummary")
    click.echo(f"  events captured      {_counter(snaps, 'cdc_capture_events_total'):>8.0f}")
    click.echo(f"  events indexed       {indexed:>8.0f}")
    click.echo(f"  events invalidated   {invalidated:>8.0f}")
    click.echo(f"  dead-lettered        {_counter(snaps, 'cdc_dead_letters_total'):>8.0f}")
    click.echo("  latency of the steady phase (histogram buckets are 10% wide):")
    for label, name in (
        ("commit->Kafka ack", "cdc_commit_to_kafka_latency"),
        ("commit->indexed", 'cdc_commit_to_sink_latency{sink="search"}'),
        ("commit->invalidated", 'cdc_commit_to_sink_latency{sink="cache"}'),
    ):
        click.echo(f"    {label:20} {_latency(snaps, before, name)}")
