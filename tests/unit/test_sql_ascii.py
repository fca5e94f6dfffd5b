"""The codec a SQL_ASCII session's text is read with (pipeline.sources.postgres.sql_ascii)."""

from __future__ import annotations

import threading

import psycopg2.extensions
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.sources.postgres.sql_ascii import CODEC, take_replaced


def test_psycopg2_reads_sql_ascii_sessions_with_it() -> None:
    assert psycopg2.extensions.encodings["SQL_ASCII"] == CODEC
    assert psycopg2.extensions.encodings["SQLASCII"] == CODEC


def test_each_byte_that_is_not_utf8_becomes_u_fffd_and_is_counted() -> None:
    take_replaced()
    assert b"caf\xc3\xa9".decode(CODEC) == "café"
    assert take_replaced() == 0
    assert b"caf\xe9 \xf0\x9f\x98\x80 \xff\xfe".decode(CODEC) == "caf\ufffd \U0001f600 \ufffd\ufffd"
    assert b"\x80".decode(CODEC) == "\ufffd"
    assert take_replaced() == 2  # values, not bytes
    assert take_replaced() == 0


@given(st.text())
def test_valid_utf8_round_trips_unchanged(text: str) -> None:
    take_replaced()
    assert text.encode(CODEC).decode(CODEC) == text
    assert take_replaced() == 0


def test_parameters_are_encoded_as_utf8_strictly() -> None:
    assert "naïve".encode(CODEC) == "naïve".encode()
    with pytest.raises(UnicodeEncodeError):
        "\udcff".encode(CODEC)  # a lone surrogate is no text PostgreSQL could hold


def test_counts_are_kept_per_thread() -> None:
    take_replaced()
    counted: list[int] = []

    def other() -> None:
        b"\xff".decode(CODEC)
        counted.append(take_replaced())

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert counted == [1]
    assert take_replaced() == 0
