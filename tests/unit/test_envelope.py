"""From pgoutput messages to Debezium-shaped change events (ChangeBuilder, TableShape)."""

from __future__ import annotations

import json

from pipeline.events import UNAVAILABLE_VALUE, decode, encode_key, encode_value
from pipeline.sources.postgres.envelope import ChangeBuilder, TableShape, TransactionContext
from pipeline.sources.postgres.pgoutput import (
    UNCHANGED_TOAST,
    Column,
    Delete,
    Insert,
    Relation,
    Update,
)

INT4, TEXT, BOOL = 23, 25, 16

PRODUCTS = Relation(
    oid=16401,
    namespace="inventory",
    name="products",
    replica_identity="d",
    columns=(
        Column(is_key=True, name="id", type_oid=INT4, type_modifier=-1),
        Column(is_key=False, name="sku", type_oid=TEXT, type_modifier=-1),
        Column(is_key=False, name="description", type_oid=TEXT, type_modifier=-1),
        Column(is_key=False, name="active", type_oid=BOOL, type_modifier=-1),
    ),
)
#: The same table with REPLICA IDENTITY FULL: pgoutput flags every column as a key column.
PRODUCTS_FULL = Relation(
    oid=16401,
    namespace="inventory",
    name="products",
    replica_identity="f",
    columns=tuple(
        Column(is_key=True, name=c.name, type_oid=c.type_oid, type_modifier=-1)
        for c in PRODUCTS.columns
    ),
)

TXN = TransactionContext(xid=731, commit_ts_us=1_700_000_000_654_321, last_commit_lsn=0x1_0000_0000)
LSN = 0x1_0000_0A28
NOW_MS = 1_700_000_000_999

builder = ChangeBuilder(server_name="shop", db="shopdb")
shape = TableShape.from_relation(PRODUCTS, ("id",))


def _events(msg, shape_=shape):
    return list(builder.events(msg, shape_, TXN, LSN, NOW_MS))


def test_insert_is_create_with_primary_key() -> None:
    (event,) = _events(Insert(PRODUCTS.oid, ("7", "SKU-7", "a lamp", "t")))
    assert event.op == "c"
    assert event.key == {"id": 7}
    assert event.before is None
    assert event.after == {"id": 7, "sku": "SKU-7", "description": "a lamp", "active": True}
    assert event.ts_ms == NOW_MS


def test_null_stays_none() -> None:
    (event,) = _events(Insert(PRODUCTS.oid, ("7", None, None, "f")))
    assert event.after == {"id": 7, "sku": None, "description": None, "active": False}


def test_update_without_old_tuple() -> None:
    (event,) = _events(Update(PRODUCTS.oid, None, None, ("7", "SKU-7", "brighter lamp", "t")))
    assert event.op == "u"
    assert event.key == {"id": 7}
    assert event.before is None
    assert event.after is not None and event.after["description"] == "brighter lamp"


def test_primary_key_change_is_delete_then_create() -> None:
    # REPLICA IDENTITY DEFAULT: the old tuple ('K') carries only the key columns
    msg = Update(PRODUCTS.oid, ("7", None, None, None), "K", ("8", "SKU-7", "a lamp", "t"))
    delete, create = _events(msg)
    assert delete.op == "d"
    assert delete.key == {"id": 7}
    assert delete.after is None
    assert delete.before is not None and delete.before["id"] == 7
    assert create.op == "c"
    assert create.key == {"id": 8}
    assert create.before is None
    assert create.after == {"id": 8, "sku": "SKU-7", "description": "a lamp", "active": True}


def test_full_identity_update_keeps_key_from_primary_key() -> None:
    full = TableShape.from_relation(PRODUCTS_FULL, ("id",))
    old = ("7", "SKU-7", "a lamp", "t")
    new = ("7", "SKU-7B", "a lamp", "t")
    (event,) = _events(Update(PRODUCTS.oid, old, "O", new), full)
    # not a delete+create just because a non-key column changed
    assert event.op == "u"
    assert event.key == {"id": 7}
    assert event.before == {"id": 7, "sku": "SKU-7", "description": "a lamp", "active": True}
    assert event.after == {"id": 7, "sku": "SKU-7B", "description": "a lamp", "active": True}


def test_full_identity_delete_key_is_primary_key() -> None:
    full = TableShape.from_relation(PRODUCTS_FULL, ("id",))
    (event,) = _events(Delete(PRODUCTS.oid, ("7", "SKU-7", "a lamp", "t"), "O"), full)
    assert event.op == "d"
    assert event.key == {"id": 7}
    assert event.before == {"id": 7, "sku": "SKU-7", "description": "a lamp", "active": True}


def test_without_primary_key_uses_replica_identity_columns() -> None:
    only_sku = Relation(
        oid=1, namespace="public", name="t", replica_identity="i",
        columns=(Column(False, "id", INT4, -1), Column(True, "sku", TEXT, -1)),
    )
    s = TableShape.from_relation(only_sku, ())
    (event,) = _events(Insert(1, ("1", "A")), s)
    assert event.key == {"sku": "A"}


def test_composite_primary_key_order() -> None:
    lines = Relation(
        oid=2, namespace="public", name="order_lines", replica_identity="d",
        columns=(
            Column(True, "line", INT4, -1), Column(True, "order_id", INT4, -1),
            Column(False, "qty", INT4, -1),
        ),
    )
    s = TableShape.from_relation(lines, ("order_id", "line"))
    (event,) = _events(Insert(2, ("3", "10", "5")), s)
    assert list(event.key.items()) == [("order_id", 10), ("line", 3)]  # type: ignore[union-attr]


def test_delete_with_key_only_old_tuple() -> None:
    (event,) = _events(Delete(PRODUCTS.oid, ("7", None, None, None), "K"))
    assert event.op == "d"
    assert event.key == {"id": 7}
    assert event.after is None
    assert event.row == event.before


def test_unchanged_toast_becomes_placeholder_not_none() -> None:
    msg = Update(PRODUCTS.oid, None, None, ("7", "SKU-7", UNCHANGED_TOAST, None))
    (event,) = _events(msg)
    assert event.after is not None
    assert event.after["description"] == UNAVAILABLE_VALUE == "__debezium_unavailable_value"
    assert event.after["active"] is None  # a real NULL stays NULL


SLUGS = Relation(
    oid=16403, namespace="inventory", name="slugs", replica_identity="d",
    columns=(Column(is_key=True, name="slug", type_oid=TEXT, type_modifier=-1),
             Column(is_key=False, name="qty", type_oid=INT4, type_modifier=-1),
             Column(is_key=False, name="body", type_oid=TEXT, type_modifier=-1)),
)  # fmt: skip


def test_an_update_of_a_row_whose_key_is_toasted_stays_an_update_of_that_key() -> None:
    """A key stored out of line is logged in the old tuple ('K') and sent as unchanged
    TOAST in the new one: the event is an update of the real key, not a delete of it and a
    create keyed by the placeholder."""
    slugs = TableShape.from_relation(SLUGS, ("slug",))
    long_key = "k" * 3000
    msg = Update(SLUGS.oid, (long_key, None, None), "K", (UNCHANGED_TOAST, "5", UNCHANGED_TOAST))
    (event,) = _events(msg, slugs)
    assert event.op == "u" and event.key == {"slug": long_key}
    assert event.after == {"slug": long_key, "qty": 5, "body": UNAVAILABLE_VALUE}
    assert event.before == {"slug": long_key, "qty": None, "body": None}


def test_replica_identity_full_fills_unchanged_toast_values_from_the_old_row() -> None:
    """With REPLICA IDENTITY FULL the old row holds every value: an unchanged TOAST value
    is published, as Debezium does, not the placeholder. A NULL stays NULL."""
    full = TableShape.from_relation(PRODUCTS_FULL, ("id",))
    msg = Update(PRODUCTS.oid, ("7", "SKU-7", "a long text", None), "O",
                 ("7", "SKU-8", UNCHANGED_TOAST, None))
    (event,) = _events(msg, full)
    assert event.after == {"id": 7, "sku": "SKU-8", "description": "a long text",
                           "active": None}


def test_source_fields() -> None:
    (event,) = _events(Insert(PRODUCTS.oid, ("7", "SKU-7", "a lamp", "t")))
    src = event.source
    assert src.connector == "postgresql"
    assert src.name == "shop"
    assert src.db == "shopdb"
    assert src.schema == "inventory"
    assert src.table == "products"
    assert event.table_id == "inventory.products"
    assert src.tx_id == 731
    assert src.lsn == LSN
    assert src.ts_us == 1_700_000_000_654_321
    assert src.ts_ms == 1_700_000_000_654
    assert json.loads(src.sequence or "") == [str(0x1_0000_0000), str(LSN)]
    assert src.snapshot == "false"
    assert event.version == LSN


def test_first_transaction_sequence_has_null_commit() -> None:
    txn = TransactionContext(xid=1, commit_ts_us=1, last_commit_lsn=None)
    (event,) = builder.events(Insert(PRODUCTS.oid, ("1", "a", "b", "t")), shape, txn, 99, 0)
    assert json.loads(event.source.sequence or "") == [None, "99"]


def test_pg_catalog_namespace() -> None:
    rel = Relation(oid=3, namespace="", name="t", replica_identity="d",
                   columns=(Column(True, "id", INT4, -1),))
    assert TableShape.from_relation(rel, ("id",)).table_id == "pg_catalog.t"


def test_truncate_event() -> None:
    event = builder.truncate(shape, TXN, LSN, NOW_MS)
    assert event.op == "t"
    assert event.key is None
    assert event.before is None and event.after is None
    assert event.table_id == "inventory.products"
    assert event.source.lsn == LSN


def test_built_events_survive_the_wire() -> None:
    msg = Update(PRODUCTS.oid, ("7", None, None, None), "K", ("8", "S", UNCHANGED_TOAST, "t"))
    for event in _events(msg):
        assert decode(encode_key(event), encode_value(event)) == event


# --- values no converter can stop ----------------------------------------------------------

NUMERIC, BYTEA, JSONB = 1700, 17, 3802
PRICES = Relation(
    oid=16402, namespace="inventory", name="prices", replica_identity="d",
    columns=(
        Column(is_key=True, name="id", type_oid=INT4, type_modifier=-1),
        Column(is_key=False, name="price", type_oid=NUMERIC, type_modifier=(10 << 16 | 2) + 4),
        Column(is_key=False, name="photo", type_oid=BYTEA, type_modifier=-1),
        Column(is_key=False, name="attrs", type_oid=JSONB, type_modifier=-1),
    ),
)  # fmt: skip


def test_a_value_the_converter_refuses_is_published_as_text_and_counted(caplog) -> None:
    # NaN has no decimal.handling.mode=precise form; Debezium stops the connector here.
    precise = TableShape.from_relation(PRICES, ("id",), decimal_mode="precise")
    row = precise.row(("1", "NaN", None, '{"huge": 1e400}'))
    assert row == {"id": 1, "price": "NaN", "photo": None, "attrs": '{"huge": 1e400}'}
    precise.row(("2", "Infinity", None, None))
    assert precise.row(("3", "1.50", None, None))["price"] == "AJY="  # 150 = 0x0096
    assert precise.unconverted.drain() == {"numeric": 2}
    assert precise.unconverted.drain() == {}
    # Logged once per (table, column), however many values.
    logged = [r.getMessage().split(":")[0] for r in caplog.records]
    assert logged == ["inventory.prices.price (numeric)"]


def test_unchanged_toast_bytea_gets_debeziums_binary_placeholder() -> None:
    s = TableShape.from_relation(PRICES, ("id",))
    (event,) = _events(Update(PRICES.oid, None, None, ("1", "2.00", UNCHANGED_TOAST,
                                                       UNCHANGED_TOAST)), s)
    # base64 of the bytes of "__debezium_unavailable_value", as Debezium's JSON carries bytes
    assert event.after["photo"] == "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="
    assert event.after["attrs"] == UNAVAILABLE_VALUE  # text-like columns: the plain string
