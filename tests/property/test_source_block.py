"""The ``source`` block is checked inline for what every writer sends (a worker decodes
every record) and by the full checks otherwise: for any value of any field, both ways
decide the same (the same SourceInfo, or the same error naming the same field)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import EventDecodeError
from pipeline.events import (
    MAX_POSITION,
    MAX_TS_MS,
    _checked_sequence_commit,
    _checked_source,
    _source_from_dict,
)

VALID: dict[str, Any] = {
    "version": "cdc-pipeline", "connector": "postgresql", "name": "shop", "db": "shop",
    "schema": "public", "table": "orders", "ts_ms": 1_764_780_000_000,
    "ts_us": 1_764_780_000_000_123, "snapshot": "false", "txId": 12_345, "lsn": 2_345_999,
    "sequence": '["2345678","2345999"]', "xmin": None,
}

# Values at and around every bound the checks have, and of every JSON type.
edge_ints = st.sampled_from([
    0, 1, -1, MAX_POSITION, MAX_POSITION + 1, MAX_TS_MS, MAX_TS_MS + 1,
    MAX_TS_MS * 1000 + 999, MAX_TS_MS * 1000 + 1000, MAX_TS_MS * 1_000_000 + 999_999,
    MAX_TS_MS * 1_000_000 + 1_000_000, 2**64])
json_values = st.one_of(
    st.none(), st.booleans(), edge_ints, st.integers(), st.floats(allow_nan=False),
    st.sampled_from(["", "false", "true", "last", "r", "public", "𝄞"]), st.text(max_size=8),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.none(),
                                                          max_size=1))
sequences = st.one_of(
    json_values,
    st.sampled_from(['["1","2"]', '[null,"2"]', '["1",null]', "[1,2]", '["01","2"]',
                     '["١","2"]', '["1"]', '["1","2","3"]', "[", '"x"', " [\"1\",\"2\"]",
                     f'["{MAX_POSITION}","{MAX_POSITION}"]', f'["{MAX_POSITION + 1}","1"]',
                     '["1","' + "9" * 120 + '"]']),
    st.builds(lambda a, b: f'["{a}","{b}"]', st.text(max_size=5), st.text(max_size=5)))


def _outcome(read: Any, value: Any) -> tuple[str, Any]:
    try:
        result = read(value)
    except EventDecodeError as exc:
        return "error", str(exc)
    return "ok", result


EDGES: list[Any] = [
    None, True, False, -1, 0, 1, 1.5, MAX_POSITION, MAX_POSITION + 1, MAX_TS_MS,
    MAX_TS_MS + 1, MAX_TS_MS * 1000 + 999, MAX_TS_MS * 1000 + 1000,
    MAX_TS_MS * 1_000_000 + 999_999, MAX_TS_MS * 1_000_000 + 1_000_000, "", "x", "false",
    "true", [], {}, '["1","2"]']


def test_every_field_at_every_edge_decides_as_the_full_checks() -> None:
    for field in [*VALID, "ts_ns"]:
        for value in [*EDGES, "<absent>"]:
            src = {**VALID, field: value}
            if value == "<absent>":
                del src[field]
            assert _outcome(_source_from_dict, src) == _outcome(_checked_source, src), (
                field, value)


@given(st.dictionaries(st.sampled_from(sorted(VALID)), json_values, max_size=4),
       st.lists(st.sampled_from(sorted(VALID)), max_size=2))
def test_inline_checks_decide_as_the_full_checks(changes: dict[str, Any],
                                                 dropped: list[str]) -> None:
    src = {**VALID, **changes}
    for field in dropped:
        src.pop(field, None)
    assert _outcome(_source_from_dict, src) == _outcome(_checked_source, src)


@given(sequences)
def test_sequence_inline_checks_decide_as_the_full_checks(sequence: Any) -> None:
    src = {**VALID, "sequence": sequence}
    assert _outcome(_source_from_dict, src) == _outcome(_checked_source, src)
    from pipeline.events import _sequence_commit
    assert _outcome(_sequence_commit, sequence) == _outcome(_checked_sequence_commit, sequence)


def test_a_block_that_is_no_object_is_refused_either_way() -> None:
    for src in (None, [], "source", 1):
        assert _outcome(_source_from_dict, src) == _outcome(_checked_source, src)
        assert _outcome(_source_from_dict, src)[0] == "error"


def _times_us_reference(block: dict[str, Any], name: str) -> int:
    """The checks one field at a time, as they were before the inline fast path."""
    from pipeline.events import _optional_int
    ts_ms = _optional_int(block.get("ts_ms"), f"{name}ts_ms", MAX_TS_MS)
    ts_us = _optional_int(block.get("ts_us"), f"{name}ts_us", MAX_TS_MS * 1000 + 999)
    _optional_int(block.get("ts_ns"), f"{name}ts_ns", MAX_TS_MS * 1_000_000 + 999_999)
    return ts_us if ts_us is not None else (ts_ms or 0) * 1000


@given(st.dictionaries(st.sampled_from(["ts_ms", "ts_us", "ts_ns"]), json_values))
def test_time_inline_checks_decide_as_one_field_at_a_time(block: dict[str, Any]) -> None:
    from pipeline.events import _times_us
    assert (_outcome(lambda b: _times_us(b, "source."), block)
            == _outcome(lambda b: _times_us_reference(b, "source."), block))
