"""Decoding the binlog's text as the server's own character sets do; no byte stops capture.

mysql-replication 1.0.17 decodes a row's text column with the Python codec it names for the
column's character set, strictly. Some of those names are wrong for MySQL's character sets:

* ``latin1`` is decoded as cp1252, which has no characters at 0x81, 0x8D, 0x8F, 0x90 and
  0x9D; MySQL's ``latin1`` maps them to U+0081 and so on, so such a byte, valid in the
  column, raised ``UnicodeDecodeError`` and stopped capture at the same event on every
  restart;
* ``utf32``, ``utf16`` and ``ucs2`` are big-endian in MySQL, but were decoded little-endian
  (``utf32`` raised, ``utf16`` came out garbled) or not at all (``ucs2``, ``utf16le``: the
  bytes were published as base64).

:func:`encoding` names the right codec for the library, each decoding with U+FFFD in place
of a byte it cannot read rather than raising (as the server itself does when it converts
such bytes for a snapshot's utf8mb4 session). A binary column stays bytes. The table map's
ENUM and SET labels are in their column's character set too (:func:`label_codec`).
:mod:`pipeline.sources.mysql.library_fixes` hands both to the library.
"""

from __future__ import annotations

import codecs
from typing import Any

from pymysqlreplication.constants.CHARSET import charset_by_name

__all__ = ["MYSQL_LATIN1", "encoding", "label_codec", "python_codec"]

#: MySQL's ``latin1``: cp1252, with its five unassigned bytes as the C1 controls they are
#: in ISO 8859-1 (what the server converts them to).
_LATIN1_TABLE = "".join(
    bytes([i]).decode("cp1252", errors="ignore") or chr(i) for i in range(256))
MYSQL_LATIN1 = "cdc_mysql_latin1"

#: The library's codec names (a column's ``character_set_name``) that are wrong for the
#: MySQL character set they stand for (in brackets).
_CODECS = {
    "cp1252": MYSQL_LATIN1,  # (latin1) the only one the library reads as cp1252
    "utf32": "utf-32-be",  # (utf32)
    "utf16": "utf-16-be",  # (utf16)
    "ucs2": "utf-16-be",  # (ucs2: UTF-16 without surrogates)
    "utf16le": "utf-16-le",  # (utf16le)
}
_LENIENT = "cdc_lenient_"


def python_codec(name: str) -> str:
    """The Python codec for a column the library names ``name`` (its own codec name for the
    column's character set), as the library itself looks it up, corrected by ``_CODECS``."""
    known = _CODECS.get(name)
    if known is not None:
        return known
    found = charset_by_name(name)
    return str(found.encoding) if found else name


def _decode_latin1(data: Any, errors: str = "strict") -> tuple[str, int]:
    return codecs.charmap_decode(bytes(data), "strict", _LATIN1_TABLE)


def _search(name: str) -> codecs.CodecInfo | None:
    if name == MYSQL_LATIN1:
        return codecs.CodecInfo(codecs.latin_1_encode, _decode_latin1, name=MYSQL_LATIN1)
    if not name.startswith(_LENIENT):
        return None
    inner = name[len(_LENIENT):]
    try:
        codec = codecs.lookup(inner)
    except LookupError:
        return None  # the library then keeps the bytes, as for any unknown character set

    def decode(data: Any, errors: str = "strict") -> tuple[str, int]:
        return codec.decode(bytes(data), "replace")

    return codecs.CodecInfo(codec.encode, decode, name=name)


def encoding(name: str) -> str:
    """The codec name the library decodes a column it names ``name`` with."""
    if name == "binary":
        return name  # no such codec: the library keeps the bytes
    try:
        codec = codecs.lookup(python_codec(name)).name
    except LookupError:
        return name  # one Python has no codec for (swe7): kept as bytes, as before
    return _LENIENT + codec.replace("-", "_")


def label_codec(library_name: str) -> str:
    """The codec an ENUM/SET label of a column the library names ``library_name`` is
    decoded with (leniently; a binary or unknown character set: as UTF-8)."""
    codec = encoding(library_name)
    try:
        codecs.lookup(codec)
    except LookupError:
        codec = _LENIENT + "utf_8"
    return codec


codecs.register(_search)
