"""The binlog's text decoded as MariaDB's character sets are (pipeline.sources.mysql.charsets)."""

from __future__ import annotations

import pytest
from pymysqlreplication.row_event import RowsEvent

from pipeline.sources.mysql import library_fixes


def _decoded(library_name: str, raw: bytes) -> str | bytes:
    """What mysql-replication's ``__read_string`` makes of ``raw`` once installed."""
    library_fixes.install()
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


def test_enum_and_set_labels_are_decoded_with_their_columns_character_set(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The library decoded labels as UTF-8 and made a latin1 'é' an empty label."""
    from types import SimpleNamespace

    from pymysqlreplication.row_event import TableMapEvent
    library_fixes.install()
    assert TableMapEvent._sync_column_info is library_fixes._sync_decoding_labels
    event = TableMapEvent.__new__(TableMapEvent)
    event.columns = [
        SimpleNamespace(enum_values=["", b"\xe9", b"x"], character_set_name="cp1252"),
        SimpleNamespace(set_values=[b"\xcf\xf0"], character_set_name="cp1251"),
        SimpleNamespace(enum_values=["", "already text"], character_set_name="utf8"),
        SimpleNamespace(enum_values=["", b"\xff"], character_set_name="binary")]
    # the library's own part fills the columns from a real event's metadata
    monkeypatch.setitem(library_fixes._LIBRARY, "sync_column_info", lambda self: None)
    library_fixes._sync_decoding_labels(event)
    assert event.columns[0].enum_values == ["", "é", "x"]
    assert event.columns[1].set_values == ["Пр"]
    assert event.columns[2].enum_values == ["", "already text"]
    assert event.columns[3].enum_values == ["", "\ufffd"]
