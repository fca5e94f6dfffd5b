"""The binlog's text decoded as MariaDB's character sets are (pipeline.sources.mysql.charsets)."""

from __future__ import annotations

import pytest
from pymysqlreplication.row_event import RowsEvent

from pipeline.sources.mysql import charsets


def _decoded(library_name: str, raw: bytes) -> str | bytes:
    """What mysql-replication's ``__read_string`` makes of ``raw`` once installed."""
    charsets.install()
    try:
        return raw.decode(RowsEvent.charset_to_encoding(library_name), "strict")
    except LookupError:
        return raw  # the library keeps the bytes


@pytest.mark.parametrize(("library_name", "raw", "text"), [
    # latin1 (the library's cp1252): MariaDB converts its five unassigned bytes to C1s
    ("cp1252", b"\x81\x8d\x8f\x90\x9d\x80\xe9", "\x81\x8d\x8f\x90\x9d\u20ac\u00e9"),
    ("utf32", "é😀".encode("utf-32-be"), "é😀"),  # big-endian, as MySQL stores it
    ("utf16", "é😀".encode("utf-16-be"), "é😀"),
    ("ucs2", "éü€".encode("utf-16-be"), "éü€"),
    ("utf16le", "é😀".encode("utf-16-le"), "é😀"),
    ("utf8", "naïve 😀".encode(), "naïve 😀"),
    ("cp1251", "Привет".encode("cp1251"), "Привет"),
    ("koi8_r", "Привет".encode("koi8_r"), "Привет"),
    # bytes a character set cannot hold: U+FFFD, never an error that stops capture
    ("utf8", b"ok \xff", "ok \ufffd"),
    ("utf32", b"\x00\x11\x00\x00", "\ufffd"),
])
def test_text_is_decoded_as_the_server_converts_it(library_name: str, raw: bytes,
                                                   text: str) -> None:
    assert _decoded(library_name, raw) == text


def test_binary_and_unknown_character_sets_stay_bytes() -> None:
    assert _decoded("binary", b"\xff\x00") == b"\xff\x00"
    assert _decoded("swe7", b"abc") == b"abc"  # no Python codec: published as base64
