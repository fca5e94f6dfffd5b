"""Dead-letter tooling, the pure parts: headers, filters, grouping, rendering, replay marks."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.deadletter import H_CLASS, H_OFFSET, H_PARTITION, H_STAGE, H_TIMESTAMP, H_TOPIC
from pipeline.dlq import (
    H_REPLAYED,
    DeadLetter,
    LetterFilter,
    ReplayMark,
    ReplayReport,
    group_letters,
    letter_json,
    preview,
    render_groups,
    render_letter,
    render_table,
    select,
)

DECODE = "pipeline.errors.EventDecodeError"
REJECTED = "pipeline.errors.SinkRejectedError"


def _letter(offset: int, *, stage: str = "decode", cls: str = DECODE, at: str | None = None,
            origin: str = "cdc.public.items", partition: int = 0, value: bytes | None = b"{}",
            key: bytes | None = b'{"id": 1}', extra: tuple[tuple[str, bytes | None], ...] = (),
            origin_offset: int | None = None) -> DeadLetter:
    headers: list[tuple[str, bytes | None]] = [
        (H_TOPIC, origin.encode()), (H_PARTITION, b"2"),
        (H_OFFSET, str(offset if origin_offset is None else origin_offset).encode()),
        (H_STAGE, stage.encode()), (H_CLASS, cls.encode()),
    ]
    if at is not None:
        headers.append((H_TIMESTAMP, at.encode()))
    return DeadLetter("cdc.dead-letter", partition, offset, key, value, (*headers, *extra))


# ---------------------------------------------------------------- headers


def test_headers_decode_as_text_and_the_last_of_a_name_wins() -> None:
    letter = _letter(0, extra=(("note", b"caf\xc3\xa9"), ("note", b"bad \xff"), ("empty", None)))
    assert letter.header("note") == "bad \\xff"
    assert letter.header("empty") is None
    assert letter.header("missing") is None
    assert letter.origin_topic == "cdc.public.items"
    assert letter.origin_partition == 2
    assert (letter.stage, letter.error_class) == ("decode", DECODE)


def test_failure_time_from_header_else_record_timestamp() -> None:
    assert _letter(0, at="2024-05-01T10:00:00.5+00:00").failed_at == datetime(
        2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC)
    bare = DeadLetter("t", 0, 0, None, None, ((H_TIMESTAMP, b"garbage"),),
                      timestamp_ms=1_700_000_000_000)
    assert bare.failed_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert DeadLetter("t", 0, 0, None, None).failed_at is None


def test_replay_keeps_the_original_headers_but_no_error_context() -> None:
    letter = _letter(0, at="2024-05-01T10:00:00+00:00",
                     extra=(("traceparent", b"00-ab"), (H_REPLAYED, b"old:0:1")))
    assert letter.passthrough_headers() == [("traceparent", b"00-ab")]


def test_letters_of_one_record_share_its_origin() -> None:
    search = _letter(0, stage="sink:search", origin_offset=7)
    cache = _letter(1, stage="sink:cache", origin_offset=7)
    assert search.origin() == cache.origin() == ("cdc.public.items", "2", "7")
    assert _letter(2, origin_offset=8).origin() != search.origin()


# ---------------------------------------------------------------- filters and groups


def test_filters_by_partition_stage_and_error_class() -> None:
    letter = _letter(0, stage="sink:search", cls=REJECTED, partition=1)
    assert LetterFilter().matches(letter)
    assert LetterFilter(partition=1, stage="sink:search", error_class=REJECTED).matches(letter)
    assert LetterFilter(error_class="SinkRejectedError").matches(letter)
    assert not LetterFilter(error_class="RejectedError").matches(letter)  # whole names only
    assert not LetterFilter(partition=0).matches(letter)
    assert not LetterFilter(stage="decode").matches(letter)


def test_select_applies_the_filter_then_the_limit() -> None:
    letters = [_letter(i, stage="decode" if i % 2 else "sink:search") for i in range(10)]
    chosen = select(letters, LetterFilter(stage="decode"), limit=3)
    assert [letter.offset for letter in chosen] == [1, 3, 5]


def test_groups_count_and_span_failures() -> None:
    letters = [
        _letter(0, at="2024-05-01T10:00:05+00:00"),
        _letter(1, stage="sink:search", cls=REJECTED, at="2024-05-01T10:00:09+00:00"),
        _letter(2, at="2024-05-01T09:59:00+00:00"),
        _letter(3, at="2024-05-01T10:30:00+00:00"),
        _letter(4, origin="cdc.public.orders"),
    ]
    groups = group_letters(letters)
    assert [(g.origin_topic, g.stage, g.count) for g in groups] == [
        ("cdc.public.items", "decode", 3),
        ("cdc.public.items", "sink:search", 1),
        ("cdc.public.orders", "decode", 1),
    ]
    assert groups[0].first == datetime(2024, 5, 1, 9, 59, tzinfo=UTC)
    assert groups[0].last == datetime(2024, 5, 1, 10, 30, tzinfo=UTC)
    assert groups[2].first is None


# ---------------------------------------------------------------- rendering


def test_table_aligns_columns_and_right_aligns_numbers() -> None:
    table = render_table(["name", "n"], [["a", "5"], ["longer", "120"]], right=frozenset({1}))
    assert table.splitlines() == [
        "name      n",
        "──────  ───",
        "a         5",
        "longer  120",
    ]


def test_table_clips_long_cells_and_escapes_control_characters() -> None:
    table = render_table(["x"], [["y" * 100], ["red\x1b[31m"]], max_width=10)
    lines = table.splitlines()
    assert lines[2] == "yyyyyyyyy…"
    assert "\x1b" not in table and lines[3] == "red\\x1b[3…"


def test_summary_of_groups() -> None:
    text = render_groups("dlq", group_letters([_letter(0, at="2024-05-01T10:00:05+00:00")] * 2))
    assert text.splitlines()[0] == "dlq: 2 dead letters"
    header = text.splitlines()[2].split()
    assert header[:3] == ["original", "topic", "stage"]
    row = text.splitlines()[4].split()
    assert row == ["cdc.public.items", "decode", DECODE, "2", "2024-05-01", "10:00:05Z",
                   "2024-05-01", "10:00:05Z"]
    assert render_groups("dlq", []) == "dlq: no dead letters"


def test_preview_of_json_text_and_binary() -> None:
    assert preview(None) == "(null)"
    assert preview(b"null") == "null"
    assert preview(b'{"id":1}') == '{"id": 1}'
    big = json.dumps({"after": {f"column_{i}": i for i in range(200)}}).encode()
    lines = preview(big).splitlines()
    assert lines[:3] == ["{", '  "after": {', '    "column_0": 0,']
    assert lines[-1] == "… (124 more lines)"  # 2 + 200 + 2 lines pretty-printed, 80 shown
    assert preview(b"\x00not json{\x1b[31m") == 'text "\\x00not json{\\x1b[31m"'
    assert preview(b"a\nb") == 'text "a\\nb"'
    assert preview(b"\xff\xfe\x00") == "hex ff fe 00"
    long_text = preview(b"x" * 500)
    assert long_text == 'text "' + "x" * 96 + '" … (500 bytes)'
    assert preview(bytes(range(128, 256))).endswith(" … (128 bytes)")


def test_letter_rendering_shows_headers_key_and_value() -> None:
    letter = _letter(7, at="2024-05-01T10:00:05+00:00", value=b"\x00bad",
                     extra=(("x-evil", b"\x1b]0;pwned\x07"),))
    text = render_letter(letter)
    lines = text.splitlines()
    assert lines[0] == (f"── cdc.dead-letter[0]@7  decode  {DECODE}  2024-05-01 10:00:05Z")
    assert any(line.split() == [H_TOPIC, "cdc.public.items"] for line in lines)
    assert "\x1b" not in text and "\x07" not in text
    assert lines[-2].split() == ["key", '{"id":', "1}"]
    assert lines[-1].split() == ["value", 'text', '"\\x00bad"']


def test_letter_as_json_parses_json_and_keeps_other_bytes_as_base64() -> None:
    doc = letter_json(_letter(3, value=b"\x00raw", key=b'{"id": 5}'))
    assert doc["key"] == {"id": 5} and "key_base64" not in doc
    assert doc["value"] is None
    assert base64.b64decode(doc["value_base64"]) == b"\x00raw"
    assert doc["headers"][H_STAGE] == "decode"
    assert (doc["topic"], doc["partition"], doc["offset"]) == ("cdc.dead-letter", 0, 3)
    json.dumps(doc)  # plain JSON all the way down


# ---------------------------------------------------------------- replay marks


def test_mark_advances_over_contiguous_replays_and_keeps_gaps() -> None:
    mark = ReplayMark()
    mark.add([0, 1, 3, 4, 7])
    assert mark.next_offset == 2
    assert [o for o in range(9) if mark.replayed(o)] == [0, 1, 3, 4, 7]
    assert mark.metadata() == "cdc-dlq-replay:v1:3-4,7"
    mark.add([2])
    assert mark.next_offset == 5 and mark.metadata() == "cdc-dlq-replay:v1:7"


def test_mark_skips_purged_offsets() -> None:
    mark = ReplayMark(0, set())
    mark.add([12], low_watermark=10)  # 0..9 were deleted: nothing left to replay there
    assert mark.next_offset == 10 and mark.replayed(12) and not mark.replayed(11)


def test_mark_from_a_group_without_commits_replays_everything() -> None:
    mark = ReplayMark.parse(-1001, None)  # confluent_kafka's OFFSET_INVALID
    assert mark.next_offset == 0 and not mark.replayed(0)
    assert ReplayMark.parse(5, "written by someone else").done == set()


@given(st.sets(st.integers(min_value=0, max_value=400), max_size=80),
       st.integers(min_value=0, max_value=50))
def test_mark_survives_a_commit_round_trip(offsets: set[int], low: int) -> None:
    mark = ReplayMark()
    mark.add(offsets, low_watermark=low)
    restored = ReplayMark.parse(mark.next_offset, mark.metadata())
    for offset in range(low, 402):
        assert restored.replayed(offset) == (offset in offsets or offset < mark.next_offset)
    assert all(o > restored.next_offset for o in restored.done)


def test_replay_report_counts_per_destination() -> None:
    report = ReplayReport()
    report.sent.update(["raw:cdc.public.items"] * 2 + ["raw:cdc.public.orders"])
    report.skipped["not matching the filters"] += 4
    report.rejected.append((_letter(9), "mapper_parsing_exception"))
    lines = report.render().splitlines()
    assert lines[0] == "replayed 3 dead letters"
    assert lines[4].split() == ["raw:cdc.public.items", "2"]
    assert lines[5].split() == ["raw:cdc.public.orders", "1"]
    assert "skipped: 4 not matching the filters" in lines
    assert lines[-1] == "rejected again: cdc.dead-letter[0]@9: mapper_parsing_exception"
    assert not report.ok
    assert ReplayReport(dry_run=True).render() == "would replay 0 dead letters"


# ---------------------------------------------------------------- command line


def test_purge_needs_an_offset_or_all() -> None:
    result = CliRunner().invoke(main, ["dlq", "purge"])
    assert result.exit_code == 2
    assert "exactly one of --up-to OFFSET or --all" in result.output
    both = CliRunner().invoke(main, ["dlq", "purge", "--all", "--up-to", "3"])
    assert both.exit_code == 2


def test_replay_destination_must_be_raw_or_a_sink() -> None:
    result = CliRunner().invoke(main, ["dlq", "replay", "--to", "elsewhere"])
    assert result.exit_code == 2
    assert "raw or sink:<name>" in result.output


def test_a_dry_run_to_a_sink_that_is_not_configured_is_refused() -> None:
    """It said it "would replay 6 dead letters" to a sink the real run refuses."""
    result = CliRunner().invoke(main, ["dlq", "replay", "--to", "sink:nosuch", "--dry-run"],
                                env={"CDC_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
                                     "CDC_POSTGRES__DSN": "dbname=none",
                                     "CDC_POSTGRES__TABLES": "[public.t]"})
    assert result.exit_code == 2  # an argument error, as the README says
    assert "no sink named 'nosuch'" in result.output, result.output


def test_again_and_wait_are_refused_with_a_replay_to_a_sink() -> None:
    """They were accepted and silently ignored."""
    for flag in (["--again"], ["--wait", "30"]):
        result = CliRunner().invoke(main, ["dlq", "replay", "--to", "sink:search", *flag])
        assert result.exit_code == 2 and "apply to a replay to the raw topic" in result.output
