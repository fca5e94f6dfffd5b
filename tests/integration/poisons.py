"""Hostile records for the poison suite (issue 9): each with the reason both workers must
dead-letter it with, or None when it is applied or skipped as the README documents."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.events import ChangeEvent, SourceInfo
from pipeline.evolution.schemas import SchemaSet
from pipeline.evolution.wire import AvroWireFormat

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
BIG = 2**63


@dataclass
class Poison:
    name: str
    value: bytes | None
    key: bytes | None | str = "row"  # "row": the row's own key, as capture writes it
    #: the reason both workers dead-letter it with (at decode); None: applied or skipped
    reason: str | None = None


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()  # json, not orjson: integers beyond 64 bits too


def poisons(sc: Any, row: int, lsn: int, victim: str) -> list[Poison]:
    """Every hostile record for row ``row``; ``lsn``: a position below the good event that
    follows (so what is applied is superseded by it)."""
    src = {"version": "x", "connector": "postgresql", "name": "it", "db": "cdc",
           "schema": sc.schema, "table": "items", "ts_ms": 1_700_000_000_000, "lsn": lsn}
    after = {"id": row, "name": f"item {row}", "qty": 0, "price": "0.00", "note": None}
    good = {"before": None, "after": after, "source": src, "op": "c", "ts_ms": 1_700_000_000_000,
            "transaction": None}

    def env(**changes: Any) -> bytes:
        doc = json.loads(json.dumps(good))
        for path, value in changes.items():
            node, *rest = path.split("__")
            if rest:
                doc[node][rest[0]] = value
            else:
                doc[node] = value
        return dumps(doc)

    def without(field: str) -> bytes:
        doc = json.loads(json.dumps(good))
        doc["source"].pop(field)
        return dumps(doc)

    orders = ChangeEvent("c", {"id": 1}, None, {"id": 1, "customer_id": 1, "total": "1"},
                         SourceInfo("postgresql", "it", "cdc", "public", "orders", 0, lsn=lsn))
    wire = AvroWireFormat(SchemaSet.load(SCHEMAS))
    try:
        avro_orders = wire.encode_event(orders, 1)
    except Exception:  # noqa: BLE001 - the demo schema changed: use a valid header instead
        avro_orders = b"\x00" + struct.pack(">I", 301)
    return [
        Poison("not json", b"not json{", reason="value is not valid JSON"),
        Poison("empty value", b"", reason="value is not valid JSON"),
        Poison("invalid utf-8", b"\xff\xfe\xfd", reason="value is not valid JSON"),
        Poison("invalid utf-8 in a string", env(after__name="x").replace(b'"x"', b'"\xff"'),
               reason="value is not valid JSON"),
        Poison("json array", b"[]", reason="value must be a JSON object"),
        Poison("json null", b"null", reason="value must be a JSON object"),
        Poison("json number", b"42", reason="value must be a JSON object"),
        Poison("nested 5000 deep", b"[" * 5000 + b"]" * 5000, reason="not valid JSON"),
        Poison("no op", env(op=None), reason="'op' must be one of"),
        Poison("op x", env(op="x"), reason="'op' must be one of"),
        Poison("op list", env(op=["c"]), reason="'op' must be one of"),
        Poison("op number", env(op=5), reason="'op' must be one of"),
        Poison("ts_ms abc", env(ts_ms="abc"), reason="'ts_ms' must be a whole number"),
        Poison("ts_ms list", env(ts_ms=[1]), reason="'ts_ms' must be a whole number"),
        Poison("ts_ms fraction", env(ts_ms=1.5), reason="'ts_ms' must be a whole number"),
        Poison("ts_ms negative", env(ts_ms=-1), reason="'ts_ms' must be a whole number"),
        Poison("ts_ms 2^63", env(ts_ms=BIG), reason="'ts_ms' must be a whole number"),
        Poison("ts_ms 1e300", env(ts_ms=1e300), reason="'ts_ms' must be a whole number"),
        Poison("ts_us text", env(ts_us="1"), reason="'ts_us' must be a whole number"),
        Poison("transaction text", env(transaction="tx"), reason="'transaction' must be"),
        Poison("no source", env(source=None), reason="'source' block is missing"),
        Poison("source text", env(source="public.items"), reason="'source' block is missing"),
        Poison("lsn 2^63", env(source__lsn=BIG), reason="'source.lsn' must be a whole number"),
        Poison("lsn 2^64", env(source__lsn=2**64 + 7), reason="'source.lsn' must be"),
        Poison("lsn -1", env(source__lsn=-1), reason="'source.lsn' must be a whole number"),
        Poison("lsn text", env(source__lsn=str(lsn)), reason="'source.lsn' must be"),
        Poison("lsn fraction", env(source__lsn=lsn + 0.5), reason="'source.lsn' must be"),
        Poison("lsn true", env(source__lsn=True), reason="'source.lsn' must be"),
        Poison("lsn 1e30", env(source__lsn=1e30), reason="'source.lsn' must be"),
        Poison("no lsn", without("lsn"), reason="'source.lsn' is missing"),
        Poison("source ts_ms text", env(source__ts_ms="abc"), reason="'source.ts_ms' must"),
        Poison("source ts_us negative", env(source__ts_us=-5), reason="'source.ts_us' must"),
        Poison("txId text", env(source__txId="seven"), reason="'source.txId' must"),
        Poison("txId 2^70", env(source__txId=2**70), reason="'source.txId' must"),
        Poison("sequence number", env(source__sequence=5), reason="'source.sequence' must"),
        Poison("sequence broken", env(source__sequence="["), reason="'source.sequence' must"),
        Poison("sequence letters", env(source__sequence='["a","1"]'),
               reason="'source.sequence' must"),
        Poison("sequence 2^64", env(source__sequence=f'["{2**64}","{lsn}"]'),
               reason="'source.sequence' must"),
        Poison("schema null", env(source__schema=None), reason="'source.schema' must be"),
        Poison("schema number", env(source__schema=5), reason="'source.schema' must be"),
        Poison("table empty", env(source__table=""), reason="'source.table' must be"),
        Poison("table list", env(source__table=["items"]), reason="'source.table' must be"),
        Poison("connector number", env(source__connector=5), reason="'source.connector'"),
        Poison("name object", env(source__name={}), reason="'source.name' must be"),
        Poison("db list", env(source__db=[1]), reason="'source.db' must be"),
        Poison("snapshot number", env(source__snapshot=1), reason="'source.snapshot' must"),
        Poison("before text", env(before="x", op="u"), reason="'before' must be an object"),
        Poison("after list", env(after=[1]), reason="'after' must be an object"),
        Poison("create without after", env(after=None), reason="needs an 'after' image"),
        # -- foreign tables: the topic says which table a record is of
        Poison("another table", env(source__table="other"), reason="cannot write to another"),
        Poison("another schema", env(source__schema="public"), reason="cannot write to another"),
        Poison("table with a comma", env(source__table=f"items,{victim}"),
               reason="cannot write to another"),
        Poison("truncate of a victim", env(op="t", after=None, source__table=f"items,{victim}"),
               key=None, reason="cannot write to another"),
        Poison("truncate of another table", env(op="t", after=None, source__table="other"),
               key=None, reason="cannot write to another"),
        Poison("table with a slash", env(source__table="items/_doc/1"),
               reason="cannot write to another"),
        # -- keys
        Poison("no key", env(), key=None, reason="needs a record key"),
        Poison("key not json", env(), key=b"\xff{", reason="key is not valid JSON"),
        Poison("key a list", env(), key=b"[1]", reason="key must be a JSON object"),
        Poison("key {}", env(), key=b"{}", reason="key {} names no primary-key column"),
        Poison("key of another row", env(), key=dumps({"id": row + 100_000}),
               reason="'after.id' disagrees with the key"),
        Poison("key as text", env(), key=dumps({"id": str(row)}),
               reason="'after.id' disagrees with the key"),
        Poison("key with an extra column", env(), key=dumps({"id": row, "x": 1}),
               reason="key column 'x' is missing from 'after'"),
        Poison("oversized key", env(after={**after, "id": "k" * 70_000}),
               key=dumps({"id": "k" * 70_000}), reason="more than 65536"),
        # -- Avro in the Confluent wire format (evolution is on)
        Poison("avro unknown schema id", b"\x00" + struct.pack(">I", 999_999) + b"\x02xx",
               reason="schema id 999999 is not in the schema set"),
        Poison("avro short header", b"\x00\x00\x01", reason="shorter than its header"),
        Poison("avro garbage body", b"\x00" + struct.pack(">I", 301) + b"\xff" * 9,
               reason="schema id 301"),
        Poison("avro of another table", avro_orders, key=b'{"id": 1}',
               reason="public.orders"),
        # -- applied or skipped as documented
        Poison("tombstone", None),
        Poison("logical message", dumps({"op": "m", "source": src, "message": {}}),
               key=b'{"prefix": "p"}'),
        # position 1: a truncate before every row, so it deletes none of them
        Poison("truncate with a key, ignored", env(op="t", after=None, source__lsn=1)),
        Poison("null commit", env(source__sequence=f'[null,"{lsn}"]')),
        Poison("huge value", env(after={**after, "p_huge": "h" * 600_000})),
        Poison("nested value", env(after={**after, "p_nested": json.loads(
            "[" * 200 + "1" + "]" * 200)})),
        Poison("schema-wrapped", dumps({"schema": {"type": "struct", "fields": [
            {"field": "after", "type": "struct", "fields": [{"field": "id", "type": "int32"}]}]},
            "payload": json.loads(env())})),
    ]
