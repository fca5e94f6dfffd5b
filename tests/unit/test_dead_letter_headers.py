"""A dead letter's headers can always be written, whatever its error quotes."""

from __future__ import annotations

import json

from pipeline.deadletter import H_MESSAGE, RawRecord, dead_letter_headers


def test_an_error_quoting_a_lone_surrogate_is_still_a_header() -> None:
    value = json.loads(b'"\\ud800"')  # valid JSON; not encodable as UTF-8
    record = RawRecord("it.public.items", 2, 41, None, b"{}")
    headers = dict(dead_letter_headers(record, "sink:search", ValueError(f"bad {value}"),
                                       "worker-search"))
    assert headers[H_MESSAGE] == b"bad \\ud800"
