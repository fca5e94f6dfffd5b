"""The local stack answers for real: SQL, Kafka metadata + produce/consume, Redis, and
Elasticsearch index/get, plus stopping and restarting one service at the same address."""

from __future__ import annotations

import json
import uuid

import httpx
import psycopg2
import pytest
import redis

from pipeline import stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def info(stack_info: stack.StackInfo) -> stack.StackInfo:
    return stack_info


def test_up_is_idempotent_and_recorded(info: stack.StackInfo) -> None:
    again = stack.up()
    assert again == info
    assert stack.load() == info
    assert (info.state_dir / "stack.json").exists()
    st = stack.status()
    # (the optional schema registry is listed too while it runs)
    assert set(st) - {"schema-registry"} == {"postgres", "kafka", "redis", "elasticsearch",
                                             "mariadb"}
    assert all(s.running and s.port and s.pid for s in st.values())
    env = stack.env_vars(info)
    assert env["CDC_KAFKA__BOOTSTRAP_SERVERS"] == info.kafka_bootstrap


def test_postgres_logical_and_cdc_database(info: stack.StackInfo) -> None:
    conn = psycopg2.connect(info.postgres_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("select current_database(), current_setting('wal_level'), 1")
            assert cur.fetchone() == ("cdc", "logical", 1)
            cur.execute("show server_version")
            assert cur.fetchone()[0].startswith("15.")
    finally:
        conn.close()


def test_kafka_metadata_and_roundtrip(info: stack.StackInfo) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": info.kafka_bootstrap}).list_topics(timeout=10)
    assert md.brokers
    topic = f"stack-test-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": info.kafka_bootstrap})
    producer.produce(topic, key=b"k", value=b"v1")
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": info.kafka_bootstrap,
            "group.id": topic,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        msg = None
        for _ in range(60):
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error():
                break
        assert msg is not None and msg.value() == b"v1"
    finally:
        consumer.close()


def test_redis_ping_set_get(info: stack.StackInfo) -> None:
    client = redis.Redis.from_url(info.redis_url)
    try:
        assert client.ping()
        client.set("stack-test", "1")
        assert client.get("stack-test") == b"1"
        assert client.info("server")["redis_version"].startswith("7.")
    finally:
        client.close()


def _index_and_get(url: str, index: str) -> dict:
    doc = {"id": 1, "name": "alice"}
    r = httpx.put(
        f"{url}/{index}/_doc/1",
        params={"refresh": "true"},
        content=json.dumps(doc),
        headers={"content-type": "application/json"},
    )
    assert r.status_code in (200, 201), r.text
    assert r.headers.get("x-elastic-product") == "Elasticsearch"
    got = httpx.get(f"{url}/{index}/_doc/1")
    assert got.status_code == 200
    return got.json()["_source"]


def test_elasticsearch_index_get(info: stack.StackInfo) -> None:
    index = f"stack-test-{uuid.uuid4().hex[:8]}"
    assert _index_and_get(info.elasticsearch_url, index) == {"id": 1, "name": "alice"}
    httpx.delete(f"{info.elasticsearch_url}/{index}")


def test_elasticsearch_stop_and_restart_keeps_port_and_data(info: stack.StackInfo) -> None:
    index = f"stack-restart-{uuid.uuid4().hex[:8]}"
    _index_and_get(info.elasticsearch_url, index)
    stack.stop_service("elasticsearch")
    assert not stack.status()["elasticsearch"].running
    assert stack.load() is None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{info.elasticsearch_url}/_cluster/health", timeout=2)
    restarted = stack.start_service("elasticsearch")
    assert restarted.elasticsearch_url == info.elasticsearch_url
    got = httpx.get(f"{info.elasticsearch_url}/{index}/_doc/1")
    assert got.status_code == 200 and got.json()["_source"]["name"] == "alice"
    httpx.delete(f"{info.elasticsearch_url}/{index}")
    assert stack.load() == info
