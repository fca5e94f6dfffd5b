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


def test_each_byte_that_is_not_utf8_becomes_u_fffd_and_the_value_is_kept() -> None:
    take_replaced()
    assert b"caf\xc3\xa9 \xef\xbf\xbd".decode(CODEC) == "café \ufffd"  # stored U+FFFD
    assert take_replaced() == []
    first = b"caf\xe9 \xf0\x9f\x98\x80 \xff\xfe".decode(CODEC)
    assert first == "caf\ufffd \U0001f600 \ufffd\ufffd"
    second = b"\x80".decode(CODEC)
    replaced = take_replaced()
    assert replaced == ["caf\ufffd \U0001f600 \ufffd\ufffd", "\ufffd"]  # values, not bytes
    assert replaced[0] is first and replaced[1] is second  # told apart by identity
    assert take_replaced() == []


@given(st.text())
def test_valid_utf8_round_trips_unchanged(text: str) -> None:
    take_replaced()
    assert text.encode(CODEC).decode(CODEC) == text
    assert take_replaced() == []


def test_parameters_are_encoded_as_utf8_strictly() -> None:
    assert "naïve".encode(CODEC) == "naïve".encode()
    with pytest.raises(UnicodeEncodeError):
        "\udcff".encode(CODEC)  # a lone surrogate is no text PostgreSQL could hold


def test_counts_are_kept_per_thread() -> None:
    take_replaced()
    counted: list[list[str]] = []

    def other() -> None:
        b"\xff".decode(CODEC)
        counted.append(take_replaced())

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert counted == [["\ufffd"]]
    assert take_replaced() == []
