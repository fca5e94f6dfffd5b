"""Log sequence numbers (LSNs): positions in PostgreSQL's write-ahead log.

PostgreSQL shows an LSN as two hexadecimal halves, ``"16/B374D848"`` (high 32 bits, a slash,
low 32 bits); on the wire and in arithmetic it is one unsigned 64-bit integer. :class:`Lsn`
holds the integer, orders naturally, and parses/prints the text form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

_MAX = (1 << 64) - 1
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, order=True, slots=True)
class Lsn:
    """A WAL position; ``Lsn.parse("16/B374D848")``, ``str(lsn)``, ``int(lsn)``, ordered."""

    value: int

    ZERO: ClassVar[Lsn]

    def __post_init__(self) -> None:
        if not 0 <= self.value <= _MAX:
            raise ValueError(f"LSN out of range (must fit in 64 unsigned bits): {self.value}")

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Parse PostgreSQL's ``"HIGH/LOW"`` hex form (case-insensitive, 1-8 digits each half).

        Raises ``ValueError`` naming the text when it is not a valid LSN.
        """
        high, sep, low = text.partition("/")
        if not (sep and _is_hex_half(high) and _is_hex_half(low)):
            raise ValueError(f"not an LSN (expected 'XXXXXXXX/XXXXXXXX' hex): {text!r}")
        return cls((int(high, 16) << 32) | int(low, 16))

    def __str__(self) -> str:
        return f"{self.value >> 32:X}/{self.value & 0xFFFFFFFF:X}"

    def __int__(self) -> int:
        return self.value


def _is_hex_half(part: str) -> bool:
    # int(x, 16) alone would also accept "+1", " 1", "0x1" and "1_0"; PostgreSQL does not.
    return 1 <= len(part) <= 8 and all(c in _HEX_DIGITS for c in part)


Lsn.ZERO = Lsn(0)
