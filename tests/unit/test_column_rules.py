"""Column rules at capture (postgres.columns): left out, masked, hashed before any byte is
encoded, so personal data never reaches Kafka; rules that do not fit the table stop capture."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from pipeline.config import TableColumnSettings, load_settings
from pipeline.errors import ConfigError, SourceSetupError
from pipeline.events import UNAVAILABLE_VALUE
from pipeline.sources.postgres.envelope import EnvelopeWriter, TableShape, TransactionContext
from pipeline.sources.postgres.pgoutput import UNCHANGED_TOAST, Column, Delete, Insert, Relation
from pipeline.sources.postgres.pgoutput import Update as UpdateMsg
from pipeline.sources.postgres.values import BUILTIN_TYPE_OIDS

TEXT, INT = BUILTIN_TYPE_OIDS["text"], BUILTIN_TYPE_OIDS["int4"]
REL = Relation(16500, "crm", "people", "d", (
    Column(True, "id", INT, -1), Column(False, "name", TEXT, -1),
    Column(False, "email", TEXT, -1), Column(False, "ssn", TEXT, -1),
    Column(False, "notes", TEXT, -1)))
ROW = ("7", "Ada", "ada@example.com", "123-45-6789", "likes tea")


def _shape(**rules: object) -> TableShape:
    return TableShape.from_relation(REL, ("id",), columns=TableColumnSettings.model_validate(
        rules))


def _values(shape: TableShape, msg: object) -> list[dict[str, object]]:
    writer = EnvelopeWriter("srv", "db")
    writer.begin(TransactionContext(1, 1_700_000_000_000_000, None))
    return [orjson.loads(v) for _op, _k, v in writer.encode(msg, shape, 99, b"1")]  # type: ignore[arg-type]


def test_masked_hashed_and_excluded_values_never_reach_the_encoded_event() -> None:
    shape = _shape(exclude=["notes"], mask={"ssn": 3}, hash=["email"], hash_salt="pepper")
    value = _values(shape, Insert(shape.oid, ROW))[0]
    assert value["after"] == {
        "id": 7, "name": "Ada", "ssn": "***",
        "email": hashlib.sha256(b"pepper" + b"ada@example.com").hexdigest()}
    encoded = orjson.dumps(_values(shape, UpdateMsg(shape.oid, ROW, "O", ROW)))
    for secret in (b"ada@example.com", b"123-45-6789", b"likes tea"):
        assert secret not in encoded  # neither in before nor after


def test_include_keeps_the_listed_and_the_key_columns() -> None:
    value = _values(_shape(include=["name"]), Delete(REL.oid, ROW, "O"))[0]
    assert value["before"] == {"id": 7, "name": "Ada"}


def test_null_and_unchanged_toast_are_left_as_they_are() -> None:
    shape = _shape(mask={"ssn": 3}, hash=["email"], hash_salt="pepper")
    row = shape.row(("7", "Ada", None, UNCHANGED_TOAST, None))
    assert row["email"] is None and row["ssn"] == UNAVAILABLE_VALUE


def test_a_hashed_key_stays_unique_and_the_record_key_is_hashed_too() -> None:
    shape = _shape(hash=["id"], hash_salt="pepper")
    writer = EnvelopeWriter("srv", "db")
    writer.begin(TransactionContext(1, 1, None))
    key, _value = writer.insert(Insert(shape.oid, ROW), shape, 5, b"1")
    assert orjson.loads(key) == {"id": hashlib.sha256(b"pepper7").hexdigest()}


def test_tables_without_rules_get_no_policy() -> None:
    assert TableShape.from_relation(REL, ("id",)).policy is None
    assert _shape().policy is None  # an empty rule set is no policy either


@pytest.mark.parametrize(("rules", "message"), [
    ({"mask": {"sssn": 4}}, "postgres.columns.crm.people.mask names sssn, which crm.people "
                            "does not have"),
    ({"exclude": ["id"]}, "exclude names the key column id"),
    ({"mask": {"id": 2}}, "mask names the key column id"),
])
def test_rules_that_do_not_fit_the_table_stop_capture(rules: dict[str, object],
                                                      message: str) -> None:
    with pytest.raises(SourceSetupError, match=message):
        _shape(**rules)


@pytest.mark.parametrize(("yaml", "message"), [
    ("  columns: {crm.people: {include: [a], exclude: [b]}}", "not both"),
    ("  columns: {crm.people: {hash: [email]}}", "hash needs a hash_salt"),
    ("  columns: {crm.other: {exclude: [b]}}", "does not list"),
    ("  skipped_operations: [x]", "skipped_operations"),
])
def test_settings_that_cannot_work_are_refused(tmp_path, yaml: str, message: str) -> None:
    path = tmp_path / "cdc.yaml"
    path.write_text(f"postgres:\n  tables: [crm.people]\n{yaml}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(path, {})


def test_other_sources_refuse_the_rules_they_would_not_apply(tmp_path) -> None:
    path = tmp_path / "cdc.yaml"
    path.write_text("postgres:\n  tables: [crm.people]\n  skipped_operations: [t]\n"
                    "capture:\n  source: polling\n")
    with pytest.raises(ConfigError, match="logical source only"):
        load_settings(path, {})


# ---------------------------------------------------------------- skipped.operations


def _capturing(skipped: tuple[str, ...]):  # type: ignore[no-untyped-def]
    from pipeline.config import KafkaSettings, PostgresSettings
    from pipeline.metrics import Metrics
    from pipeline.sources.postgres.envelope import ChangeBuilder
    from pipeline.sources.postgres.source import PostgresSource

    source = PostgresSource(
        PostgresSettings(tables=("crm.people",), skipped_operations=skipped),  # type: ignore[arg-type]
        KafkaSettings(bootstrap_servers="127.0.0.1:1"), Metrics("test"))
    shape = TableShape.from_relation(REL, ("id",))
    source.shapes[shape.oid], source.topics[shape.oid] = shape, "cdc.crm.people"
    source.writer, source.builder = EnvelopeWriter("cdc", "db"), ChangeBuilder("cdc", "db")
    source._ctx = TransactionContext(1, 1, None)
    source.writer.begin(source._ctx)
    return source


def _ops(source) -> list[str]:  # type: ignore[no-untyped-def]
    return [orjson.loads(item[2])["op"] for item in source._out if item[2] is not None]


def test_skipped_operations_are_not_published_and_the_rest_is() -> None:
    from pipeline.sources.postgres.pgoutput import Truncate

    source = _capturing(("u", "t"))
    moved = ("8", *ROW[1:])  # a key change is a delete and a create: both kept
    for msg in (Insert(REL.oid, ROW), UpdateMsg(REL.oid, ROW, "O", ROW),
                UpdateMsg(REL.oid, ROW, "O", moved), Delete(REL.oid, ROW, "O")):
        source._change(msg, 10)
    source._truncate(Truncate((REL.oid,), False, False), 11)
    assert _ops(source) == ["c", "d", "c", "d"]
    source._flush_counts()
    skipped = source.metrics.counters
    assert skipped[("cdc_capture_skipped_events_total",
                    (("op", "u"), ("table", "crm.people")))] == 1
    assert skipped[("cdc_capture_skipped_events_total",
                    (("op", "t"), ("table", "crm.people")))] == 1


def test_without_skipped_operations_everything_is_published() -> None:
    from pipeline.sources.postgres.pgoutput import Truncate

    source = _capturing(())
    source._change(UpdateMsg(REL.oid, ROW, "O", ROW), 10)
    source._truncate(Truncate((REL.oid,), False, False), 11)
    assert _ops(source) == ["u", "t"]
