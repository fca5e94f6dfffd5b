"""A SQL_ASCII database's bytes: read exactly, published with U+FFFD (sql_ascii.py)."""

from __future__ import annotations

import codecs

import psycopg2.extensions
from hypothesis import given
from hypothesis import strategies as st

from pipeline.sources.postgres.sql_ascii import CODEC, published


def test_psycopg2_decodes_a_sql_ascii_session_with_the_exact_codec() -> None:
    # psycopg2 looks the session's encoding up without the underscore
    assert psycopg2.extensions.encodings["SQLASCII"] == CODEC


@given(st.binary(max_size=64))
def test_any_bytes_read_go_back_as_the_same_bytes(data: bytes) -> None:
    """A key read is the next chunk's bound: it must reach PostgreSQL byte for byte."""
    text = codecs.decode(data, CODEC)
    assert codecs.encode(text, CODEC) == data


@given(st.binary(max_size=64))
def test_what_is_published_is_utf8_with_a_replacement_per_bad_byte(data: bytes) -> None:
    row = published(lambda values: values)((codecs.decode(data, CODEC), None, 7))
    assert row[0] == data.decode("utf-8", "replace") and row[1:] == (None, 7)
    row[0].encode()  # encodable: orjson accepts it


def test_valid_utf8_and_other_values_are_published_as_read() -> None:
    text = codecs.decode("naïve \U0001f600".encode(), CODEC)
    assert published(tuple)((text, b"\xff", 1.5)) == ("naïve \U0001f600", b"\xff", 1.5)
