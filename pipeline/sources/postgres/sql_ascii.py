"""Reading a ``SQL_ASCII`` database, which stores any bytes in its text.

PostgreSQL converts every other database encoding to the session's UTF-8, but not
``SQL_ASCII``: it checks the stored bytes as UTF-8 on their way to a UTF-8 session and fails
the query on the first that is not. Such a session therefore uses ``SQL_ASCII`` itself and
gets the bytes as stored, which psycopg2 decodes with :data:`CODEC`: UTF-8, each byte that is
not kept as a lone surrogate (``surrogateescape``), and encoded back the same way. A key read
so goes back into the next chunk's bound, or a verify lookup, byte for byte. Only what is
published has each such byte replaced by U+FFFD (:func:`published`), as the stream's decoder
(``pgoutput._text``) and Debezium's Java decoding do.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg2.extensions

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["CODEC", "exact_bytes", "published", "read_exactly"]

log = logging.getLogger(__name__)

#: The Python codec psycopg2 uses for a ``SQL_ASCII`` session (registered at import).
CODEC = "cdc_sql_ascii"


def _decode(data: Buffer, errors: str = "strict", /) -> tuple[str, int]:
    return codecs.utf_8_decode(data, "surrogateescape", True)


def _encode(text: str, errors: str = "strict", /) -> tuple[bytes, int]:
    return codecs.utf_8_encode(text, "surrogateescape")


def _find(name: str) -> codecs.CodecInfo | None:
    return codecs.CodecInfo(name=CODEC, encode=_encode, decode=_decode) if name == CODEC else None


codecs.register(_find)
# psycopg2 looks encodings up by the name without '_' and '-' (``clear_encoding_name``)
psycopg2.extensions.encodings["SQLASCII"] = psycopg2.extensions.encodings["SQL_ASCII"] = CODEC

_warned = False


def read_exactly(conn: Any) -> None:
    """Make a session on a ``SQL_ASCII`` database read its text as stored (see above);
    other databases' sessions stay as they are (UTF-8)."""
    if conn.get_parameter_status("server_encoding") != "SQL_ASCII":
        return
    conn.set_client_encoding("SQL_ASCII")
    global _warned
    if not _warned:
        _warned = True
        log.warning("the database's encoding is SQL_ASCII: its text is read as UTF-8, and "
                    "bytes that are not UTF-8 are published as U+FFFD")


def exact_bytes(conn: Any) -> bool:
    """Whether ``conn`` reads a ``SQL_ASCII`` database's bytes as stored."""
    return bool(conn.encoding == "SQLASCII" or conn.encoding == "SQL_ASCII")


def _replaced(text: str) -> str:
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def published(row_of: Callable[[tuple[Any, ...]], Any]) -> Callable[[tuple[Any, ...]], Any]:
    """``row_of`` (a shape's row builder) for values read by :func:`read_exactly`: each byte
    that is not UTF-8 becomes U+FFFD before the values are converted."""
    def row(values: tuple[Any, ...]) -> Any:
        return row_of(tuple(_replaced(v) if type(v) is str else v for v in values))
    return row
