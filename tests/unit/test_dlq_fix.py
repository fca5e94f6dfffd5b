"""Ending the dead-letter loop, the pure parts: a transform fixes a letter before replay, a
replay's records carry its id, and letters of replayed records are told apart."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.deadletter import H_CLASS, H_OFFSET, H_PARTITION, H_STAGE, H_TOPIC
from pipeline.dlq import (
    H_REPLAY_ID,
    H_REPLAYED,
    H_TRANSFORM,
    DeadLetter,
    LetterFilter,
    ReplayReport,
    group_letters,
    render_groups,
)
from pipeline.dlq_transform import TransformFailed, load_transform, transformed
from pipeline.errors import ConfigError

REJECTED = "pipeline.errors.SinkRejectedError"


def qty_as_number(value: Any, letter: DeadLetter) -> Any:
    """A user's fix: ``"12 pcs"`` -> 12; letters of other stages are left out."""
    if letter.stage != "sink:search":
        return None
    value["after"]["qty"] = int(str(value["after"]["qty"]).removesuffix(" pcs"))
    return value


def _letter(offset: int, value: bytes | None, *, replay: str | None = None,
            stage: str = "sink:search") -> DeadLetter:
    headers: list[tuple[str, bytes | None]] = [
        (H_TOPIC, b"cdc.public.items"), (H_PARTITION, b"0"), (H_OFFSET, str(offset).encode()),
        (H_STAGE, stage.encode()), (H_CLASS, REJECTED.encode()), ("traceparent", b"00-ab")]
    if replay is not None:
        headers += [(H_REPLAYED, b"cdc.dead-letter:0:1"), (H_REPLAY_ID, replay.encode()),
                    (H_TRANSFORM, b"fixes:qty")]
    return DeadLetter("cdc.dead-letter", 0, offset, b'{"id":1}', value, tuple(headers))


EVENT = orjson.dumps({"before": None, "after": {"id": 1, "qty": "12 pcs"}, "op": "c"})


def test_a_transform_fixes_the_value_and_keeps_the_rest_of_the_event() -> None:
    fixed = transformed(qty_as_number, EVENT, _letter(3, EVENT))
    assert fixed is not None
    assert orjson.loads(fixed) == {"before": None, "after": {"id": 1, "qty": 12}, "op": "c"}


def test_a_transform_may_leave_a_letter_out_or_return_bytes() -> None:
    assert transformed(qty_as_number, EVENT, _letter(3, EVENT, stage="decode")) is None
    assert transformed(lambda v, _l: b"raw bytes", b"\x00not json", _letter(3, None)) == (
        b"raw bytes")
    seen: list[Any] = []
    transformed(lambda v, _l: seen.append(v) or b"", b"\x00not json", _letter(3, None))
    assert seen == [b"\x00not json"]  # not JSON: the bytes as they are


def test_a_failing_transform_names_the_error_and_the_letter_is_not_sent() -> None:
    with pytest.raises(TransformFailed, match="KeyError"):
        transformed(lambda v, _l: v["missing"], EVENT, _letter(3, EVENT))
    with pytest.raises(TransformFailed, match="not JSON"):
        transformed(lambda v, _l: object(), EVENT, _letter(3, EVENT))


def test_load_transform_names_the_option_when_the_path_is_wrong() -> None:
    assert load_transform("tests.unit.test_dlq_fix:qty_as_number") is qty_as_number
    for bad in ("no_colon", "tests.unit.test_dlq_fix:absent", "no_such_module_xyz:f"):
        with pytest.raises(ConfigError, match="--transform"):
            load_transform(bad)


def test_replay_headers_are_context_not_passed_on_by_the_next_replay() -> None:
    letter = _letter(9, EVENT, replay="20250101T000000Z-abc123")
    assert letter.replay_id == "20250101T000000Z-abc123"
    assert letter.passthrough_headers() == [("traceparent", b"00-ab")]
    assert _letter(1, EVENT).replay_id is None


def test_letters_of_a_replay_are_found_by_its_id() -> None:
    flt = LetterFilter(replay_id="r1")
    assert flt.matches(_letter(1, EVENT, replay="r1"))
    assert not flt.matches(_letter(2, EVENT, replay="r2"))
    assert not flt.matches(_letter(3, EVENT))


def test_the_list_says_which_letters_failed_again_after_a_replay() -> None:
    text = render_groups("dlq", group_letters(
        [_letter(0, EVENT), _letter(1, EVENT, replay="r1"), _letter(2, EVENT, replay="r1")]))
    assert text.splitlines()[0] == "dlq: 3 dead letters"
    assert "  2  replay r1  (cdc dlq list --replay-id r1)" in text.splitlines()


def test_the_report_names_the_replay_and_what_came_back() -> None:
    report = ReplayReport(replay_id="r2")
    report.sent["raw:cdc.public.items"] += 3
    report.returned["r1"] += 4
    report.failed_again = [_letter(7, EVENT, replay="r2")]
    lines = report.render().splitlines()
    assert "  replay r1: 4" in lines  # not replayed: they would only fail once more
    assert "replay id r2" in lines
    assert "dead-lettered again: 1 of 3 records" in lines
    assert lines[-1].split() == ["1", "sink:search", REJECTED]
    # two sinks refused the same replayed record: one record, two letters ("2 of 1" before)
    report.failed_again = [_letter(7, EVENT, replay="r2"),
                           _letter(7, EVENT, replay="r2", stage="sink:cache")]
    report.sent["raw:cdc.public.items"] = 1
    assert ("dead-lettered again: 1 of 1 records (2 letters: one per sink that refused)"
            in report.render().splitlines())


def test_a_report_without_waiting_says_how_to_check_later() -> None:
    report = ReplayReport(replay_id="r3")
    report.sent["raw:cdc.public.items"] += 1
    assert report.render().splitlines()[-1] == (
        "records that fail again come back with this id: cdc dlq list --replay-id r3")
    report.failed_again, report.settled = [], False
    assert "the workers had not processed every replayed record yet" in report.render()


def test_show_shortens_a_huge_value_on_one_line_too() -> None:
    from pipeline.dlq import preview

    shown = preview(orjson.dumps({"after": {"name": "n" * 2_000_000}}))
    assert len(shown) < 1000 and "more characters)" in shown
