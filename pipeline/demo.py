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
    index_documents,
    project,
    slot_active,
    table_rows,
    wait_until,
)
from pipeline.metrics import read_snapshots
from pipeline.postgres.slot import ReplicationSlot

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


def _workload_changes(conn: Any, rows: int, rng: random.Random) -> dict[str, list[int]]:
    """Updates and deletes in several transactions; returns the ids touched per table."""
    touched: dict[str, list[int]] = {"customers": [], "products": [], "orders": []}
    ids = list(range(1, rows + 1))
    for _ in range(10):
        with conn, conn.cursor() as cur:
            for pid in rng.sample(ids, max(1, rows // 20)):
                cur.execute(
                    "UPDATE products SET price = price * 1.1, name = name || '*' WHERE id = %s",
                    (pid,),
                )
                touched["products"].append(pid)
            for cid in rng.sample(ids, max(1, rows // 40)):
                cur.execute("UPDATE customers SET email = %s WHERE id = %s",
                            (f"changed{cid}@example.com", cid))
                touched["customers"].append(cid)
            for oid in rng.sample(ids, max(1, rows // 40)):
                cur.execute("UPDATE orders SET status = 'shipped' WHERE id = %s", (oid,))
                touched["orders"].append(oid)
    with conn, conn.cursor() as cur:
        doomed = rng.sample(ids, max(1, rows // 10))
        cur.execute("DELETE FROM orders WHERE id = ANY(%s) RETURNING id", (doomed,))
        touched["orders"].extend(r[0] for r in cur.fetchall())
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


def run_demo(keep_running: bool, rows: int) -> int:
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
    slot.drop()
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
    assert settings.redis is not None
    cache = redis.Redis.from_url(settings.redis.url.get_secret_value())
    procs = [
        PipelineProcess("capture", env, work / "capture.log"),
        PipelineProcess("worker", env, work / "worker.log"),
    ]
    ok = False
    try:
        if not wait_until(lambda: slot_active(dsn, settings.postgres.slot), 60):
            raise click.ClickException("capture did not start:\n" + procs[0].tail(30))
        rng = random.Random(7)
        click.echo(f"capture and worker started (logs in {work}); inserting {rows} rows per table")
        _workload_inserts(conn, rows, rng)
        if not wait_until(lambda: _index_matches(settings, dsn), 120, 0.5):
            raise click.ClickException("inserts did not reach Elasticsearch in 120 s:\n"
                                       + "\n".join(p.tail(15) for p in procs))
        _warm_cache(cache, rows)
        click.echo("index matches the tables; cache warmed; now updates and deletes")
        touched = _workload_changes(conn, rows, rng)
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
    _summary(work / "metrics")
    if keep_running:
        click.echo(f"still running (capture pid {procs[0].proc.pid}, worker pid "
                   f"{procs[1].proc.pid}); `cdc stack down` stops the servers")
        click.echo("\n".join(f"export {k}='{v}'" for k, v in env.items()))
    else:
        slot.drop()
        if not was_running:
            stack.down()
    return 0 if ok else 1


def _summary(metrics_dir: Path) -> None:
    snaps = read_snapshots(metrics_dir)
    latency: dict[str, Any] = {}
    for snap in snaps.values():
        latency.update(snap.get("latency_ms", {}))
    search = latency.get('cdc_commit_to_sink_latency{sink="search"}', {})
    cache = latency.get('cdc_commit_to_sink_latency{sink="cache"}', {})
    click.echo("\nsummary")
    click.echo(f"  events captured      {_counter(snaps, 'cdc_capture_events_total'):>8.0f}")
    indexed = _counter(snaps, 'cdc_sink_events_total{sink="search"}')
    invalidated = _counter(snaps, 'cdc_sink_events_total{sink="cache"}')
    click.echo(f"  events indexed       {indexed:>8.0f}")
    click.echo(f"  events invalidated   {invalidated:>8.0f}")
    click.echo(f"  dead-lettered        {_counter(snaps, 'cdc_dead_letters_total'):>8.0f}")
    click.echo(f"  commit->indexed      p50 {search.get('p50')} ms   p99 {search.get('p99')} ms")
    click.echo(f"  commit->invalidated  p50 {cache.get('p50')} ms   p99 {cache.get('p99')} ms")
