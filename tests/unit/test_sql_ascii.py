"""The codec a SQL_ASCII session's text is read with (pipeline.sources.postgres.sql_ascii)."""

from __future__ import annotations

import threading

import psycopg2.extensions
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.sources.postgres.sql_ascii import CODEC, replaced_values


def test_psycopg2_reads_sql_ascii_sessions_with_it() -> None:
    assert psycopg2.extensions.encodings["SQL_ASCII"] == CODEC
    assert psycopg2.extensions.encodings["SQLASCII"] == CODEC


def test_each_byte_that_is_not_utf8_becomes_u_fffd_and_the_value_is_kept() -> None:
    with replaced_values() as replaced:
        assert b"caf\xc3\xa9 \xef\xbf\xbd".decode(CODEC) == "café \ufffd"  # stored U+FFFD
        assert replaced == []
        first = b"caf\xe9 \xf0\x9f\x98\x80 \xff\xfe".decode(CODEC)
        assert first == "caf\ufffd \U0001f600 \ufffd\ufffd"
        second = b"\x80".decode(CODEC)
    assert replaced == ["caf\ufffd \U0001f600 \ufffd\ufffd", "\ufffd"]  # values, not bytes
    assert replaced[0] is first and replaced[1] is second  # told apart by identity


def test_nothing_is_kept_outside_a_reader_s_block() -> None:
    """Other sessions (triggers, outbox, catalog) decode with it too, for as long as they
    run: what they replace must not pile up."""
    b"\xff".decode(CODEC)
    with replaced_values() as replaced:
        pass
    assert replaced == []
    with replaced_values() as outer:
        with replaced_values() as inner:
            b"\xff".decode(CODEC)
        b"\xfe".decode(CODEC)
    assert (inner, outer) == (["\ufffd"], ["\ufffd"])


@given(st.text())
def test_valid_utf8_round_trips_unchanged(text: str) -> None:
    with replaced_values() as replaced:
        assert text.encode(CODEC).decode(CODEC) == text
    assert replaced == []


def test_parameters_are_encoded_as_utf8_strictly() -> None:
    assert "naïve".encode(CODEC) == "naïve".encode()
    with pytest.raises(UnicodeEncodeError):
        "\udcff".encode(CODEC)  # a lone surrogate is no text PostgreSQL could hold


def test_values_are_kept_per_thread() -> None:
    counted: list[list[str]] = []

    def other() -> None:
        with replaced_values() as replaced:
            b"\xff".decode(CODEC)
        counted.append(replaced)

    with replaced_values() as mine:
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert counted == [["\ufffd"]] and mine == []
