"""Issue 9, item 6: `cdc dlq show` used to crash (RecursionError) on a dead letter holding
deeply nested JSON; it must show it (as text) like any other letter."""

from __future__ import annotations

import json

import pytest

from pipeline.dlq import DeadLetter, letter_json, render_letter


@pytest.mark.parametrize("depth", [150, 5_000, 200_000])
def test_deeply_nested_json_is_shown_not_a_crash(depth: int) -> None:
    value = b'{"a":' * depth + b"1" + b"}" * depth
    letter = DeadLetter("cdc.dead-letter", 0, 7, b'{"id": 1}', value,
                        (("__connect.errors.stage", b"decode"),))
    shown = render_letter(letter)
    assert "cdc.dead-letter[0]@7" in shown
    assert 'value  text "{"a":{"a":' in shown
    assert f"({len(value)} bytes)" in shown
    doc = json.loads(json.dumps(letter_json(letter)))  # what `dlq show --json` prints
    assert doc["key"] == {"id": 1}
    assert doc["value"] is None and doc["value_base64"]


def test_ordinary_nesting_is_still_pretty_printed() -> None:
    value = json.dumps({"after": {"a": {"b": {"c": [1, 2, {"d": "x" * 80}]}}}}).encode()
    shown = render_letter(DeadLetter("dlq", 0, 1, None, value))
    assert '"d": "' in shown and "text" not in shown
