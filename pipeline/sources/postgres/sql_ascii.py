"""Reading a ``SQL_ASCII`` database's text: as UTF-8, each byte that is not as U+FFFD.

A ``SQL_ASCII`` database stores any bytes. PostgreSQL checks them as UTF-8 on their way to a
UTF-8 session, so one value that is not (a Latin-1 'é' written by an old application) made
every snapshot chunk, backfill chunk or verify read holding it fail with SQLSTATE 22021, on
every retry. A ``SQL_ASCII`` session gets the bytes as stored, and psycopg2 decodes them with
the codec registered here: UTF-8, with U+FFFD in place of each byte that is not, as the
stream's decoder does (``pgoutput.take_replaced_values``) and as Debezium's Java decoding
does. A row read here and the same row streamed give the same event values.

psycopg2 picks a connection's codec by the session's encoding name, for the whole process:
mapping ``SQL_ASCII`` here (instead of psycopg2's strict ``ascii``, which refused even valid
UTF-8) applies to every connection whose session is ``SQL_ASCII``. Parameters are encoded as
UTF-8, strictly.

What was replaced cannot be read back exactly, so a chunk's last key, which the next chunk
starts after, must not hold such a byte: :func:`replaced_values` lets a reader count them, and
``TableReader`` refuses a key that holds one rather than skip rows.
"""

from __future__ import annotations

import codecs
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2.extensions

__all__ = ["CODEC", "as_stored", "replaced_values"]

#: The Python codec name psycopg2 uses for ``SQL_ASCII`` sessions.
CODEC = "cdc-utf8-replacing"

_state = threading.local()  # decoding runs in the thread that fetches


def _decode(data: Any, errors: str = "strict") -> tuple[str, int]:
    raw = bytes(data)
    try:
        return raw.decode(), len(raw)
    except UnicodeDecodeError:
        text = raw.decode(errors="replace")
        texts = getattr(_state, "texts", None)
        if texts is not None:
            texts.append(text)
        return text, len(raw)


def _encode(text: str, errors: str = "strict") -> tuple[bytes, int]:
    return text.encode(), len(text)


def _search(name: str) -> codecs.CodecInfo | None:
    if name in (CODEC, CODEC.replace("-", "_")):  # codecs normalizes the name it looks up
        return codecs.CodecInfo(_encode, _decode, name=CODEC)
    return None


codecs.register(_search)
for _name in ("SQL_ASCII", "SQLASCII"):  # psycopg2 looks up both spellings
    psycopg2.extensions.encodings[_name] = CODEC


@contextmanager
def replaced_values() -> Iterator[list[str]]:
    """The values this thread decodes with U+FFFD inside the ``with`` block: the very
    objects psycopg2 returns (tell them by identity: a value stored as U+FFFD is not one).
    Outside such a block nothing is kept (other sessions' reads are not counted)."""
    texts: list[str] = []
    outer = getattr(_state, "texts", None)
    _state.texts = texts
    try:
        yield texts
    finally:
        _state.texts = outer


def as_stored(conn: Any) -> Any:
    """Switch ``conn``'s session to ``SQL_ASCII`` when its database is ``SQL_ASCII`` (see the
    module's text); returns ``conn``. Call it before the first query."""
    if conn.get_parameter_status("server_encoding") == "SQL_ASCII":
        conn.set_client_encoding("SQL_ASCII")
    return conn
