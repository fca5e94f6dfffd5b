"""Polling's pure parts: the statements it composes, its watermarks and positions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg2 import sql

from pipeline.config import load_settings
from pipeline.errors import ConfigError
from pipeline.positions import (
    UNIX_EPOCH_VERSION,
    PollPosition,
    Watermark,
    timestamp_version,
)
from pipeline.sources.polling.query import PolledTable, bound_query, poll_query, unseen_query

TABLE = PolledTable("shop", "order lines", ("id", "line", "note", "updated_at"),
                    ("id", "line"), "updated_at", zoned=True)


def render(part: sql.Composable) -> str:
    """The statement as PostgreSQL would receive it, quoting identifiers the way psycopg2
    does, without a connection."""
    if isinstance(part, sql.Composed):
        return "".join(render(p) for p in part.seq)
    if isinstance(part, sql.SQL):
        return part.string
    if isinstance(part, sql.Identifier):
        return ".".join('"' + s.replace('"', '""') + '"' for s in part.strings)
    if isinstance(part, sql.Placeholder):
        return "%s"
    if isinstance(part, sql.Literal):
        return repr(part.wrapped)
    raise TypeError(part)


def plain_text(part: sql.Composable) -> str:
    """Only the SQL text pieces (what is not quoted by psycopg2)."""
    if isinstance(part, sql.Composed):
        return "".join(plain_text(p) for p in part.seq)
    return part.string if isinstance(part, sql.SQL) else ""


def test_the_first_poll_reads_from_the_first_row_up_to_the_bound() -> None:
    query, params = poll_query(TABLE, None, "2026-01-01 00:00:00+00", "UTC", 500)
    out = ", ".join(f'CASE WHEN num_nulls("polled"."{c}") = 0 THEN concat("polled"."{c}") END'
                    for c in ("id", "line", "note", "updated_at"))
    assert render(query) == (
        f'SELECT {out} FROM "shop"."order lines" AS "polled" '
        'WHERE "polled"."updated_at" <= %s::timestamptz '
        'ORDER BY "polled"."updated_at", "polled"."id", "polled"."line" LIMIT 500')
    assert params == ["2026-01-01 00:00:00+00"]


def test_later_polls_resume_after_the_watermark_row_by_row_comparison() -> None:
    """(ts, pk) > (watermark): rows sharing the watermark's timestamp with a higher key are
    still read, so a batch ending among equal timestamps skips none of them."""
    mark = Watermark(("updated_at", "id", "line"), "2025-12-31 23:00:00.5+00", ("7", "2"))
    query, params = poll_query(TABLE, mark, "2026-01-01 00:00:00+00", "UTC", 10)
    text = render(query)
    assert ('WHERE ("polled"."updated_at", "polled"."id", "polled"."line") > (%s, %s, %s) '
            'AND "polled"."updated_at" <= %s::timestamptz') in text
    assert params == ["2025-12-31 23:00:00.5+00", "7", "2", "2026-01-01 00:00:00+00"]


def test_order_is_by_the_table_columns_not_by_their_text() -> None:
    """The output columns are text and keep their names: an unqualified ORDER BY id would
    sort 10 before 9."""
    text = render(poll_query(TABLE, None, "b", "UTC", 1)[0])
    order = text.split("ORDER BY ")[1]
    assert order.startswith('"polled"."updated_at", "polled"."id"')


def test_a_timestamp_without_time_zone_is_bounded_in_the_writers_zone() -> None:
    local = PolledTable("s", "t", ("id", "at"), ("id",), "at", zoned=False)
    query, params = poll_query(local, None, "2026-01-01 00:00:00+00", "Europe/Paris", 5)
    assert '"polled"."at" <= (%s::timestamptz AT TIME ZONE %s)' in render(query)
    assert params == ["2026-01-01 00:00:00+00", "Europe/Paris"]


def test_no_name_reaches_the_sql_text_unquoted() -> None:
    table = PolledTable("we\"ird", "t; DROP TABLE x", ("a b", "ts\""), ("a b",), "ts\"",
                        zoned=True)
    mark = Watermark(("ts\"", "a b"), "2026-01-01", ("x'); --",))
    query, params = poll_query(table, mark, "2026-01-01", "UTC", 3)
    text = plain_text(query) + plain_text(unseen_query(table))
    for name in ("we\"ird", "DROP", "a b", "ts\"", "x')"):
        assert name not in text
    assert "x'); --" in params  # values travel as parameters


def test_the_bound_of_mode_horizon_stops_at_the_oldest_open_transaction() -> None:
    lag, horizon = render(bound_query("lag")), render(bound_query("horizon"))
    assert "now() - make_interval(secs => %s)" in lag
    assert "pg_stat_activity" not in lag
    assert "LEAST(now() - make_interval(secs => %s), (SELECT min(xact_start)" in horizon
    assert "pid <> pg_backend_pid()" in horizon
    assert "pg_prepared_xacts" in horizon
    assert lag.count("%s") == horizon.count("%s") == 1


# -- versions and positions --------------------------------------------------------------
MOMENTS = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                       timezones=st.just(UTC))


def pg_text(moment: datetime) -> str:
    """How PostgreSQL prints a timestamptz with TimeZone=UTC and DateStyle=ISO."""
    text = f"{moment.year:04d}" + moment.strftime("-%m-%d %H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "+00"


@given(MOMENTS, MOMENTS)
def test_versions_follow_timestamps_one_microsecond_for_one(a: datetime, b: datetime) -> None:
    va, vb = timestamp_version(pg_text(a)), timestamp_version(pg_text(b))
    assert va - vb == (a - b) // timedelta(microseconds=1)
    assert 0 < va < 2**63  # an Elasticsearch external version


def test_version_examples() -> None:
    assert timestamp_version("1970-01-01 00:00:00+00") == UNIX_EPOCH_VERSION
    assert timestamp_version("1970-01-01 01:00:00+01") == UNIX_EPOCH_VERSION
    assert timestamp_version("1970-01-01 00:00:00.000001") == UNIX_EPOCH_VERSION + 1
    assert timestamp_version("1969-12-31 23:59:59.999999+00") == UNIX_EPOCH_VERSION - 1
    assert timestamp_version("-infinity") == 0
    assert timestamp_version("0044-03-15 12:00:00+00 BC") == 0


def test_watermarks_and_positions_survive_encoding() -> None:
    marks = {"shop.orders": Watermark(("updated_at", "id", "line"), "2026-01-01 00:00:00+00",
                                        ("7", "b")),
             "shop.items": Watermark(("changed", "id"), "2026-01-02 00:00:00", ("1",))}
    position = PollPosition(42, marks)
    again = PollPosition.decode(position.encode())
    assert again == position and again.watermarks == marks


def test_positions_order_by_batches_whatever_their_watermarks() -> None:
    older = PollPosition(3, {"a.b": Watermark(("t", "id"), "2027-01-01", ("9",))})
    newer = PollPosition(4, {"a.b": Watermark(("t", "id"), "2026-01-01", ("1",))})
    assert older < newer and max(newer, older) is newer
    assert sorted([newer, older]) == [older, newer]


@pytest.mark.parametrize("data", [
    {}, {"batches": "1", "tables": {}}, {"batches": -1, "tables": {}},
    {"batches": 1, "tables": {"a.b": {"columns": ["t"], "ts": "x", "key": []}}},
    {"batches": 1, "tables": {"a.b": {"columns": ["t", "id"], "ts": 5, "key": ["1"]}}},
    {"batches": 1, "tables": {"a.b": {"columns": ["t"], "ts": "x", "key": ["1"]}}},
    {"batches": 1, "tables": {"a.b": {"column": "t", "ts": "x", "key": ["1"]}}},
])
def test_an_unreadable_position_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PollPosition.decode(data)


# -- settings ----------------------------------------------------------------------------
def test_per_table_columns_override_the_defaults() -> None:
    settings = load_settings(None, {
        "CDC_POSTGRES__TABLES": "[s.a, s.b]", "CDC_CAPTURE__SOURCE": "polling",
        "CDC_POLLING__SOFT_DELETE_COLUMN": "deleted",
        "CDC_POLLING__TABLES": '{"s.b": {"timestamp_column": "changed_on", '
                               '"created_column": "created_on"}}'})
    assert settings.capture.source == "polling"
    assert settings.polling.columns("s.a") == ("updated_at", None, "deleted")
    assert settings.polling.columns("s.b") == ("changed_on", "created_on", "deleted")


def test_a_polled_table_must_be_listed() -> None:
    with pytest.raises(ConfigError, match="postgres.tables does not list"):
        load_settings(None, {"CDC_POSTGRES__TABLES": "[s.a]",
                             "CDC_POLLING__TABLES": '{"s.z": {}}'})
