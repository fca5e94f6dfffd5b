"""Column rules applied to each row at capture (``postgres.columns``): leave columns out,
mask them, or hash them, so personal data never reaches Kafka, a dead letter or a sink.

Rules are checked against the table's columns when its Relation message (or catalog entry)
arrives: a rule naming a column the table lacks, or one that would leave out or mask a key
column, stops capture with the setting to fix, rather than letting a misspelled rule pass
the data through. Tables without rules get no policy: the hot path does not look further.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.config import TableColumnSettings
from pipeline.errors import SourceSetupError
from pipeline.events import UNAVAILABLE_BINARY, UNAVAILABLE_VALUE

_PLACEHOLDERS = (UNAVAILABLE_VALUE, UNAVAILABLE_BINARY)


@dataclass(frozen=True, slots=True)
class ColumnPolicy:
    """What to do with one table's row values: drop, mask, hash (in that order)."""

    dropped: tuple[str, ...]
    masks: tuple[tuple[str, str], ...]
    hashes: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, table_id: str, rules: TableColumnSettings | None, names: tuple[str, ...],
           key_names: tuple[str, ...]) -> ColumnPolicy | None:
        """The policy of a table with columns ``names``; None when it has no rules."""
        if rules is None:
            return None
        setting = f"postgres.columns.{table_id}"
        present = set(names)
        for field_name, listed in (("include", rules.include), ("exclude", rules.exclude),
                                   ("mask", tuple(rules.mask)), ("hash", rules.hash)):
            unknown = [c for c in listed if c not in present]
            if unknown:
                raise SourceSetupError(
                    f"{setting}.{field_name} names {', '.join(unknown)}, which {table_id} "
                    f"does not have (columns: {', '.join(names)}): fix the setting")
        for field_name, listed in (("exclude", rules.exclude), ("mask", tuple(rules.mask))):
            keyed = [c for c in listed if c in key_names]
            if keyed:
                raise SourceSetupError(
                    f"{setting}.{field_name} names the key column {', '.join(keyed)}: a "
                    "change must carry its key (hash it instead, which keeps it unique)")
        dropped = tuple(n for n in names if n in rules.exclude) if rules.exclude else tuple(
            n for n in names if rules.include and n not in rules.include
            and n not in key_names)
        salt = b"" if rules.hash_salt is None else rules.hash_salt.get_secret_value().encode()
        policy = cls(dropped=dropped,
                     masks=tuple((c, "*" * n) for c, n in rules.mask.items()),
                     hashes=tuple((c, salt) for c in rules.hash))
        return policy if (dropped or policy.masks or policy.hashes) else None

    def apply(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with the rules applied (changed in place, and returned). NULL stays NULL
        and an unchanged-TOAST placeholder stays one (the sink keeps the value it has)."""
        for name in self.dropped:
            row.pop(name, None)
        for name, stars in self.masks:
            value = row.get(name)
            if value is not None and value not in _PLACEHOLDERS:
                row[name] = stars
        for name, salt in self.hashes:
            value = row.get(name)
            if value is not None and value not in _PLACEHOLDERS:
                row[name] = hashed(salt, value)
        return row


def hashed(salt: bytes, value: Any) -> str:
    """Hex SHA-256 of the salt and the value (text as is, anything else as its JSON)."""
    data = value.encode() if isinstance(value, str) else orjson.dumps(value)
    return hashlib.sha256(salt + data).hexdigest()
