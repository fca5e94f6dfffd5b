"""Dead-letter tooling behind ``cdc dlq``: list, show, replay and purge dead letters.

Reading never changes anything: a consumer with a private group id is assigned every
partition of the dead-letter topic and reads up to the high watermarks captured at start,
so a command always ends, even on an empty topic or while the worker adds letters.

Replay idempotency. ``replay --to raw`` re-produces a dead letter's original key, value and
non-error headers to its original topic and partition (per-row order is kept even for topics
written with another partitioner), adding ``cdc.replayed.from=<dlq>:<partition>:<offset>``.
What was replayed is remembered in Kafka, in the consumer group ``<app_id>-dlq-replay``: per
dead-letter partition, the committed offset is the first letter not yet replayed, and the
commit's metadata lists the letters after it that were (a filtered replay leaves gaps).
A second replay skips what is marked, so only new (or still unreplayed) letters go out;
``--again`` ignores the mark. The mark is committed only after Kafka acknowledged the
records, so a crash in between replays them once more: harmless, since every sink is
idempotent by version. ``replay --to sink:<name>`` writes directly to one sink and keeps no
mark: the sink itself refuses anything not newer than what it holds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from pipeline.config import Settings
from pipeline.deadletter import (
    H_CLASS,
    H_OFFSET,
    H_PARTITION,
    H_STAGE,
    H_TIMESTAMP,
    H_VALUE_DROPPED,
)
from pipeline.deadletter import H_TOPIC as H_ORIGIN_TOPIC
from pipeline.dlq_transform import Transform, TransformFailed, transformed
from pipeline.errors import BadDataError, CdcError, ConfigError, RetriableError
from pipeline.kafka.client import client_config, list_topics, produce_waiting

H_REPLAYED = "cdc.replayed.from"
#: The replay a record was sent by; a worker copies it into the letter if it fails again.
H_REPLAY_ID = "cdc.replay.id"
#: The transform a replayed record went through (``--transform``).
H_TRANSFORM = "cdc.replay.transform"
ERROR_HEADER_PREFIXES = ("__connect.errors.", "cdc.errors.", H_REPLAYED, H_REPLAY_ID,
                         H_TRANSFORM)
MARK_PREFIX = "cdc-dlq-replay:v1:"
#: Kafka refuses commit metadata above offset.metadata.max.bytes (4096 by default).
MARK_MAX_CHARS = 4000
PREVIEW_BYTES = 96
MAX_VALUE_LINES = 80
#: ... and characters shown of one line (`cdc dlq show --json` gives everything).
MAX_LINE_CHARS = 500
COMPACT_JSON_CHARS = 72
READ_IDLE_TIMEOUT_S = 30.0
#: Deeper JSON is shown as text: rendering it recursively could exhaust the stack.
MAX_JSON_DEPTH = 100

Headers = tuple[tuple[str, bytes | None], ...]


# ---------------------------------------------------------------- dead letters (pure)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the dead-letter topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int = 0

    def header(self, name: str) -> str | None:
        for key, value in reversed(self.headers):  # the last one wins, as Connect does
            if key == name:
                return None if value is None else value.decode("utf-8", "backslashreplace")
        return None

    @property
    def origin_topic(self) -> str | None:
        return self.header(H_ORIGIN_TOPIC)

    @property
    def origin_partition(self) -> int | None:
        return _int_or_none(self.header(H_PARTITION))

    @property
    def stage(self) -> str:
        return self.header(H_STAGE) or "?"

    @property
    def error_class(self) -> str:
        return self.header(H_CLASS) or "?"

    @property
    def failed_at(self) -> datetime | None:
        """When it failed: the ``cdc.errors.timestamp`` header, else the record's timestamp."""
        text = self.header(H_TIMESTAMP)
        if text:
            try:
                parsed = datetime.fromisoformat(text)
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
            except ValueError:
                pass
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC) if self.timestamp_ms else None

    def origin(self) -> tuple[str | None, ...]:
        """The original record's coordinates: (topic, partition, offset) as in the headers."""
        return (self.origin_topic, self.header(H_PARTITION), self.header(H_OFFSET))

    @property
    def replay_id(self) -> str | None:
        """The replay that sent the record which failed again (None: not a replayed one)."""
        return self.header(H_REPLAY_ID) or (
            "(unnamed)" if self.header(H_REPLAYED) is not None else None)

    def passthrough_headers(self) -> list[tuple[str, bytes | None]]:
        """The original record's own headers, without the dead-letter context."""
        return [(k, v) for k, v in self.headers if not k.startswith(ERROR_HEADER_PREFIXES)]


def _int_or_none(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class LetterFilter:
    """Which dead letters a command acts on; None matches anything."""

    partition: int | None = None
    stage: str | None = None
    error_class: str | None = None
    #: Only letters of records that failed again after this replay.
    replay_id: str | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.partition is not None and letter.partition != self.partition:
            return False
        if self.replay_id is not None and letter.replay_id != self.replay_id:
            return False
        if self.stage is not None and letter.stage != self.stage:
            return False
        if self.error_class is not None:
            name = letter.error_class
            # "SinkRejectedError" matches "pipeline.errors.SinkRejectedError"
            if self.error_class != name and not name.endswith("." + self.error_class):
                return False
        return True


@dataclass(slots=True)
class LetterGroup:
    """Dead letters sharing original topic, stage and error class."""

    origin_topic: str
    stage: str
    error_class: str
    count: int = 0
    first: datetime | None = None
    last: datetime | None = None
    #: Letters of records a replay sent, by replay id (they failed again).
    replays: Counter[str] = field(default_factory=Counter)

    def add(self, letter: DeadLetter) -> None:
        self.count += 1
        if letter.replay_id is not None:
            self.replays[letter.replay_id] += 1
        at = letter.failed_at
        if at is not None:
            self.first = at if self.first is None else min(self.first, at)
            self.last = at if self.last is None else max(self.last, at)


def group_letters(letters: Iterable[DeadLetter]) -> list[LetterGroup]:
    """Counts by (original topic, stage, error class), most numerous first."""
    groups: dict[tuple[str, str, str], LetterGroup] = {}
    for letter in letters:
        key = (letter.origin_topic or "?", letter.stage, letter.error_class)
        groups.setdefault(key, LetterGroup(*key)).add(letter)
    return sorted(groups.values(),
                  key=lambda g: (-g.count, g.origin_topic, g.stage, g.error_class))


# ---------------------------------------------------------------- rendering (pure)


def printable(text: str) -> str:
    """Text safe for a terminal: control characters (and so escape sequences) escaped."""
    return "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text)


def format_time(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                 right: frozenset[int] = frozenset(), max_width: int = 60) -> str:
    """Aligned columns with a rule under the header; numbers (``right``) right-aligned."""
    def clip(cell: str) -> str:
        cell = printable(cell).replace("\n", " ")
        return cell if len(cell) <= max_width else cell[: max_width - 1] + "…"

    cells = [[clip(c) for c in row] for row in [list(header), *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    return "\n".join([line(cells[0]), line(["─" * w for w in widths]), *map(line, cells[1:])])


def render_groups(topic: str, groups: Sequence[LetterGroup]) -> str:
    total = sum(g.count for g in groups)
    if not total:
        return f"{topic}: no dead letters"
    rows = [[g.origin_topic, g.stage, g.error_class, str(g.count), format_time(g.first),
             format_time(g.last)] for g in groups]
    table = render_table(["original topic", "stage", "error class", "count", "first failure",
                          "last failure"], rows, right=frozenset({3}))
    text = f"{topic}: {total} dead letter{'s' * (total != 1)}\n\n{table}"
    replays: Counter[str] = sum((g.replays for g in groups), Counter())
    if replays:
        text += "\n\nfailed again after a replay (a plain replay skips them):\n" + "\n".join(
            f"  {n}  replay {printable(rid)}  (cdc dlq list --replay-id {printable(rid)})"
            for rid, n in sorted(replays.items()))
    return text


def _json_or_none(data: bytes | None) -> Any:
    """``data`` parsed as JSON, or None when it is not JSON or nests deeper than
    ``MAX_JSON_DEPTH`` (printing it would exhaust Python's recursion limit; such a value is
    shown as text instead)."""
    if data is None:
        return None
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return parsed if _nesting_within(parsed, MAX_JSON_DEPTH) else None


def _nesting_within(value: Any, limit: int) -> bool:
    """Whether lists and objects in ``value`` nest at most ``limit`` deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return False
                stack.append((child, depth + 1))
    return True


def preview(data: bytes | None) -> str:
    """JSON pretty-printed; other bytes as escaped text, or hex when not UTF-8; truncated."""
    if data is None:
        return "(null)"
    parsed = _json_or_none(data)
    if parsed is not None or data.strip() == b"null":
        compact = json.dumps(parsed, ensure_ascii=False)
        if len(compact) <= COMPACT_JSON_CHARS:
            return printable(compact)
        lines = json.dumps(parsed, indent=2, ensure_ascii=False).splitlines()
        if len(lines) > MAX_VALUE_LINES:
            lines = [*lines[:MAX_VALUE_LINES], f"… ({len(lines) - MAX_VALUE_LINES} more lines)"]
        lines = [line if len(line) <= MAX_LINE_CHARS else
                 f"{line[:MAX_LINE_CHARS]} … ({len(line) - MAX_LINE_CHARS} more characters)"
                 for line in lines]  # a 2 MB string is one line
        return printable("\n".join(lines))
    suffix = f" … ({len(data)} bytes)" if len(data) > PREVIEW_BYTES else ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"hex {data[:PREVIEW_BYTES].hex(' ')}{suffix}"
    shown = printable(text[:PREVIEW_BYTES]).replace("\n", "\\n")
    return f'text "{shown}"{suffix if len(text) > PREVIEW_BYTES else ""}'


def render_letter(letter: DeadLetter) -> str:
    width = max((len(k) for k, _ in letter.headers), default=0)
    out = [f"── {letter.topic}[{letter.partition}]@{letter.offset}  "
           f"{letter.stage}  {letter.error_class}  {format_time(letter.failed_at)}"]
    out += [f"  {printable(k).ljust(width)}  {printable(letter.header(k) or '(null)')}"
            for k in dict(letter.headers)]
    for name, data in (("key", letter.key), ("value", letter.value)):
        body = preview(data).splitlines() or [""]
        out.append(f"  {name:<5}  {body[0]}")
        out += [f"         {line}" for line in body[1:]]
    return "\n".join(out)


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter as plain JSON; key/value parsed if JSON, else given as base64."""
    doc: dict[str, Any] = {
        "topic": letter.topic, "partition": letter.partition, "offset": letter.offset,
        "failed_at": None if letter.failed_at is None else letter.failed_at.isoformat(),
        "headers": {k: letter.header(k) for k in dict(letter.headers)},
    }
    for name, data in (("key", letter.key), ("value", letter.value)):
        parsed = _json_or_none(data)
        doc[name] = parsed
        if parsed is None and data is not None and data.strip() != b"null":
            doc[f"{name}_base64"] = base64.b64encode(data).decode()
    return doc


# ---------------------------------------------------------------- the replay mark (pure)


@dataclass(slots=True)
class ReplayMark:
    """Per dead-letter partition: every offset below ``next_offset`` was replayed, and so
    were the offsets in ``done`` (all at or above it)."""

    next_offset: int = 0
    done: set[int] = field(default_factory=set)

    def replayed(self, offset: int) -> bool:
        return offset < self.next_offset or offset in self.done

    def add(self, offsets: Iterable[int], low_watermark: int = 0) -> None:
        self.done.update(offsets)
        self.next_offset = max(self.next_offset, low_watermark)
        while self.next_offset in self.done:
            self.next_offset += 1
        self.done = {o for o in self.done if o > self.next_offset}

    def metadata(self) -> str:
        """The ``done`` set as ranges, e.g. ``cdc-dlq-replay:v1:12-15,18``."""
        ranges: list[str] = []
        for start, end in _runs(sorted(self.done)):
            ranges.append(str(start) if start == end else f"{start}-{end}")
        return MARK_PREFIX + ",".join(ranges)

    @classmethod
    def parse(cls, offset: int, metadata: str | None) -> ReplayMark:
        done: set[int] = set()
        if metadata and metadata.startswith(MARK_PREFIX):
            for part in filter(None, metadata[len(MARK_PREFIX):].split(",")):
                start, _, end = part.partition("-")
                done.update(range(int(start), int(end or start) + 1))
        return cls(max(offset, 0), {o for o in done if o >= offset})


def _runs(offsets: Sequence[int]) -> Iterator[tuple[int, int]]:
    start = prev = None
    for o in offsets:
        if prev is not None and o == prev + 1:
            prev = o
            continue
        if start is not None and prev is not None:
            yield start, prev
        start = prev = o
    if start is not None and prev is not None:
        yield start, prev


# ---------------------------------------------------------------- Kafka


def _client_config(settings: Settings) -> dict[str, Any]:
    return client_config(settings.kafka)


class DeadLetterReader:
    """Reads a dead-letter topic up to the high watermarks seen when it was opened."""

    def __init__(self, settings: Settings, topic: str, group_id: str | None = None) -> None:
        self.topic = topic
        self.group_id = group_id or f"{settings.worker.app_id}-dlq-reader-{uuid.uuid4().hex[:8]}"
        self.consumer = Consumer({**_client_config(settings), "group.id": self.group_id,
                                  "enable.auto.commit": False, "enable.partition.eof": True,
                                  "auto.offset.reset": "earliest"})
        meta = list_topics(self.consumer, 10, topic).topics.get(topic)
        if meta is None or meta.error is not None:
            self.consumer.close()
            raise CdcError(f"dead-letter topic {topic} does not exist")
        self.watermarks: dict[int, tuple[int, int]] = {
            p: self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in sorted(meta.partitions)
        }

    def __enter__(self) -> DeadLetterReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.consumer.close()

    def read(self, starts: dict[int, int]) -> Iterator[DeadLetter]:
        """Letters from ``starts[partition]`` (clamped to the low watermark) to the end."""
        pending = {p: (max(starts[p], self.watermarks[p][0]), self.watermarks[p][1])
                   for p in starts if p in self.watermarks}
        pending = {p: r for p, r in pending.items() if r[0] < r[1]}
        if not pending:
            return
        self.consumer.assign([TopicPartition(self.topic, p, s) for p, (s, _) in pending.items()])
        idle_until = time.monotonic() + READ_IDLE_TIMEOUT_S
        while pending:
            messages = self.consumer.consume(500, 0.5)
            if messages:
                idle_until = time.monotonic() + READ_IDLE_TIMEOUT_S
            elif time.monotonic() > idle_until:
                raise RetriableError(f"reading {self.topic} stalled: {sorted(pending)} unread")
            for msg in messages:
                p = msg.partition()
                if p not in pending:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.pop(p, None)
                        continue
                    raise RetriableError(f"reading {self.topic}: {err}")
                letter = _letter(msg)
                if letter.offset < pending[p][1]:
                    yield letter
                if letter.offset >= pending[p][1] - 1:
                    pending.pop(p)


def _letter(msg: Message) -> DeadLetter:
    raw: Any = msg.headers() or ()  # a list of (name, bytes | None) from librdkafka
    headers = tuple((k, v.encode() if isinstance(v, str) else v) for k, v in raw)
    return DeadLetter(topic=msg.topic() or "", partition=msg.partition() or 0,
                      offset=msg.offset() or 0, key=msg.key(), value=msg.value(),
                      headers=headers, timestamp_ms=msg.timestamp()[1])


def select(letters: Iterable[DeadLetter], flt: LetterFilter, limit: int | None) -> list[DeadLetter]:
    chosen: list[DeadLetter] = []
    for letter in letters:
        if limit is not None and len(chosen) >= limit:
            break
        if flt.matches(letter):
            chosen.append(letter)
    return chosen


def _starts(reader: DeadLetterReader, flt: LetterFilter, offset: int | None) -> dict[int, int]:
    return {p: offset if offset is not None else low
            for p, (low, _) in reader.watermarks.items()
            if flt.partition is None or p == flt.partition}


def list_letters(settings: Settings, topic: str, flt: LetterFilter) -> list[LetterGroup]:
    with DeadLetterReader(settings, topic) as reader:
        letters = reader.read(_starts(reader, flt, None))
        return group_letters(letter for letter in letters if flt.matches(letter))


def show_letters(settings: Settings, topic: str, flt: LetterFilter, offset: int | None,
                 limit: int | None) -> list[DeadLetter]:
    with DeadLetterReader(settings, topic) as reader:
        return select(reader.read(_starts(reader, flt, offset)), flt, limit)


# ---------------------------------------------------------------- replay


@dataclass(slots=True)
class ReplayReport:
    """What a replay did (or, on a dry run, would do)."""

    dry_run: bool = False
    sent: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    rejected: list[tuple[DeadLetter, str]] = field(default_factory=list)
    #: Letters the transform failed on (not sent).
    unfixed: list[tuple[DeadLetter, str]] = field(default_factory=list)
    #: This replay's id (header ``cdc.replay.id`` of every record it sent).
    replay_id: str | None = None
    #: Letters of earlier replays' records, by replay id: they failed again.
    returned: Counter[str] = field(default_factory=Counter)
    #: After ``--wait``: this replay's records dead-lettered again, and whether every sink's
    #: worker had processed them all (else the count may still grow).
    failed_again: list[DeadLetter] | None = None
    settled: bool = True

    @property
    def ok(self) -> bool:
        return not self.rejected and not self.unfixed

    def render(self) -> str:
        verb = "would replay" if self.dry_run else "replayed"
        total = sum(self.sent.values())
        out = [f"{verb} {total} dead letter{'s' * (total != 1)}"]
        if self.sent:
            rows = [[dest, str(n)] for dest, n in sorted(self.sent.items())]
            out += ["", render_table(["destination", "count"], rows, right=frozenset({1}))]
        if self.skipped:
            out += ["", "skipped: " + ", ".join(f"{n} {why}" for why, n in self.skipped.items())]
        if self.returned:
            out += ["", "dead-lettered again after an earlier replay (not replayed: fix them "
                        "with --transform, or --again):"]
            out += [f"  replay {printable(rid)}: {n}" for rid, n in sorted(self.returned.items())]
        for letter, reason in self.rejected:
            out.append(f"rejected again: {letter.topic}[{letter.partition}]@{letter.offset}: "
                       f"{printable(reason)}")
        for letter, reason in self.unfixed:
            out.append(f"not sent: {letter.topic}[{letter.partition}]@{letter.offset}: "
                       f"{printable(reason)}")
        if self.replay_id is not None and not self.dry_run and total:
            out += ["", f"replay id {self.replay_id}"]
            out += self._followup()
        return "\n".join(out)

    def _followup(self) -> list[str]:
        check = f"cdc dlq list --replay-id {self.replay_id}"
        if self.failed_again is None:
            return [f"records that fail again come back with this id: {check}"]
        n = len(self.failed_again)
        records = len({letter.origin() for letter in self.failed_again})
        what = (f"{records} of {sum(self.sent.values())} records"
                + (f" ({n} letters: one per sink that refused)" if n != records else ""))
        head = (f"dead-lettered again: {what}"
                if self.settled else
                f"dead-lettered again so far: {what} (the workers had not processed every "
                f"replayed record yet: {check} later)")
        lines = [head]
        for g in group_letters(self.failed_again):
            lines.append(f"  {g.count}  {g.stage}  {g.error_class}")
        return lines


def replay_group(settings: Settings) -> str:
    return f"{settings.worker.app_id}-dlq-replay"


def _load_marks(reader: DeadLetterReader) -> dict[int, ReplayMark]:
    asked = [TopicPartition(reader.topic, p) for p in reader.watermarks]
    committed = reader.consumer.committed(asked, timeout=10)
    return {tp.partition: ReplayMark.parse(tp.offset, tp.metadata) for tp in committed}


def new_replay_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def replay_raw(settings: Settings, topic: str, flt: LetterFilter, offset: int | None = None,
               limit: int | None = None, again: bool = False,
               dry_run: bool = False, transform: Transform | None = None,
               transform_name: str | None = None,
               wait_s: float = 0.0) -> ReplayReport:
    """Re-produce dead letters to their original topics; see the module docstring.

    Letters of records an earlier replay sent (they failed again) are not replayed unless
    ``again`` or a ``transform`` (which fixes them) is given: replaying them unchanged
    would only dead-letter them once more. ``transform``: applied to each value first
    (:mod:`pipeline.dlq_transform`). ``wait_s``: then wait up to that long for the workers
    to process the replayed records, and report those dead-lettered again."""
    report = ReplayReport(dry_run=dry_run, replay_id=new_replay_id())
    with DeadLetterReader(settings, topic, replay_group(settings)) as reader:
        marks = _load_marks(reader)
        chosen: dict[tuple[str | None, ...], list[DeadLetter]] = {}
        for letter in reader.read(_starts(reader, flt, offset)):
            if not flt.matches(letter):
                report.skipped["not matching the filters"] += 1
            elif not again and marks[letter.partition].replayed(letter.offset):
                report.skipped["already replayed (--again replays them anyway)"] += 1
            elif not again and transform is None and letter.replay_id is not None:
                report.returned[letter.replay_id] += 1
            elif letter.origin_topic is None:
                report.skipped[f"without a {H_ORIGIN_TOPIC} header"] += 1
            elif letter.header(H_VALUE_DROPPED) is not None:
                report.skipped[VALUE_DROPPED] += 1
            elif letter.origin() in chosen:
                # Each sink's worker dead-letters a bad record on its own: one record, one
                # re-produce (it reaches every sink again); all its letters count as replayed.
                chosen[letter.origin()].append(letter)
                report.skipped["copies of a record already chosen (sent once)"] += 1
            elif limit is None or len(chosen) < limit:
                chosen[letter.origin()] = [letter]
        firsts = [twins[0] for twins in chosen.values()]
        if transform is not None:
            firsts = _transform_all(transform, firsts, report)
        if dry_run:
            report.sent.update(f"raw:{letter.origin_topic}" for letter in firsts)
            return report
        extra = [(H_REPLAY_ID, str(report.replay_id).encode())]
        if transform_name is not None:
            extra.append((H_TRANSFORM, transform_name.encode()))
        ends = {p: high for p, (_, high) in reader.watermarks.items()}
        delivered, failure, written = _produce(settings, topic, firsts, extra)
        report.sent.update(f"raw:{letter.origin_topic}" for letter in delivered)
        _commit_marks(reader, marks, [t for d in delivered for t in chosen[d.origin()]])
    if failure:
        raise RetriableError(f"{len(firsts) - len(delivered)} records were not acknowledged "
                             f"(the others are marked as replayed): {failure}")
    if wait_s > 0 and delivered:
        report.settled = _await_workers(settings, written, wait_s)
        report.failed_again = _letters_of_replay(settings, topic, ends, str(report.replay_id))
    return report


def _transform_all(transform: Transform, letters: Sequence[DeadLetter],
                   report: ReplayReport) -> list[DeadLetter]:
    """The letters with their values fixed; a failing transform rejects its letter, one
    returning None leaves it out (neither is sent nor marked)."""
    fixed: list[DeadLetter] = []
    for letter in letters:
        try:
            value = transformed(transform, letter.value, letter)
        except TransformFailed as exc:
            report.unfixed.append((letter, str(exc)))
            continue
        if value is None:
            report.skipped["left out by the transform"] += 1
            continue
        fixed.append(replace(letter, value=value))
    return fixed


def _produce(settings: Settings, topic: str, letters: Sequence[DeadLetter],
             extra: Sequence[tuple[str, bytes]] = ()
             ) -> tuple[list[DeadLetter], str | None, dict[tuple[str, int], int]]:
    """Produce with an idempotent acks=all producer; returns what Kafka acknowledged, the
    first failure, and the highest offset written per (topic, partition)."""
    written: dict[tuple[str, int], int] = {}
    if not letters:
        return [], None, written
    producer = Producer({**_client_config(settings), "message.max.bytes": 16 * 1024 * 1024,
                         **settings.kafka.producer_config(),
                         "enable.idempotence": True, "acks": "all", "linger.ms": 5})
    partitions: dict[str, int] = {}
    for name in {letter.origin_topic for letter in letters if letter.origin_topic}:
        meta = list_topics(producer, 10, name).topics.get(name)
        if meta is None or meta.error is not None:
            raise CdcError(f"original topic {name} does not exist: create it, then replay")
        partitions[name] = len(meta.partitions)
    delivered: list[DeadLetter] = []
    failures: list[str] = []

    def on_delivery(letter: DeadLetter) -> Callable[[Any, Any], None]:
        def done(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))
                return
            delivered.append(letter)
            at = (msg.topic(), msg.partition())
            written[at] = max(written.get(at, -1), msg.offset())
        return done

    for letter in letters:
        origin = letter.origin_topic or ""
        # The original partition keeps the row's order even for topics written by a
        # producer with another partitioner (Debezium's murmur2 versus librdkafka's crc32).
        p = letter.origin_partition
        headers: list[tuple[str, str | bytes | None]] = [*letter.passthrough_headers(),
                   (H_REPLAYED, f"{topic}:{letter.partition}:{letter.offset}".encode()),
                   *extra]
        kwargs: dict[str, Any] = {"partition": p} if p is not None and p < partitions[origin] \
            else {}
        produce_waiting(producer, origin, letter.value, letter.key, 0.5, headers=headers,
                        on_delivery=on_delivery(letter), **kwargs)
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining:
        failures.append(f"{remaining} still in flight after 60 s")
    return delivered, (failures[0] if failures else None), written


def _await_workers(settings: Settings, written: dict[tuple[str, int], int],
                   wait_s: float) -> bool:
    """Wait until every sink's consumer group committed past the replayed records (a
    worker commits only after writing or dead-lettering a record); False on timeout."""
    from pipeline.sinks.registry import sink_names

    groups = [settings.group_id(name) for name in sink_names(settings)]
    wanted = [TopicPartition(t, p) for t, p in written]
    deadline = time.monotonic() + wait_s
    pending = set(groups)
    while pending:
        for group in sorted(pending):
            consumer = Consumer({**_client_config(settings), "group.id": group,
                                 "enable.auto.commit": False})
            try:
                committed = consumer.committed(wanted, timeout=10)
            except KafkaException:
                committed = []
            finally:
                consumer.close()
            if committed and all(tp.offset > written[(tp.topic, tp.partition)]
                                 for tp in committed):
                pending.discard(group)
        if pending and time.monotonic() >= deadline:
            return False
        if pending:
            time.sleep(0.5)
    return True


def _letters_of_replay(settings: Settings, topic: str, starts: dict[int, int],
                       replay_id: str) -> list[DeadLetter]:
    """The letters written since ``starts`` that carry ``replay_id``."""
    with DeadLetterReader(settings, topic) as reader:
        flt = LetterFilter(replay_id=replay_id)
        return [letter for letter in reader.read({p: starts.get(p, 0)
                                                  for p in reader.watermarks})
                if flt.matches(letter)]


def _commit_marks(reader: DeadLetterReader, marks: dict[int, ReplayMark],
                  delivered: Sequence[DeadLetter]) -> None:
    by_partition: dict[int, list[int]] = {}
    for letter in delivered:
        by_partition.setdefault(letter.partition, []).append(letter.offset)
    offsets: list[TopicPartition] = []
    for p, done in by_partition.items():
        mark = marks[p]
        mark.add(done, reader.watermarks[p][0])
        metadata = mark.metadata()
        if len(metadata) > MARK_MAX_CHARS:
            raise CdcError(f"the replay mark of partition {p} grew too scattered to store; "
                           f"replay the gaps (or purge) to compact it")
        offsets.append(TopicPartition(reader.topic, p, mark.next_offset, metadata))
    if offsets:
        try:
            reader.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            raise RetriableError(f"replayed, but could not record it in group "
                                 f"{reader.group_id}: {exc}") from exc


def replay_to_sink(settings: Settings, topic: str, sink_name: str, flt: LetterFilter,
                   offset: int | None = None, limit: int | None = None,
                   dry_run: bool = False, transform: Transform | None = None) -> ReplayReport:
    """Decode dead letters (fixed by ``transform`` first, if given) and write them to one
    configured sink (idempotent by version)."""
    from pipeline.events import ChangeEvent, decode
    from pipeline.processing import foreign_table
    from pipeline.sinks.registry import sink_names

    configured = sink_names(settings)
    if sink_name not in configured:  # also for --dry-run: it would not say what happens
        names = ", ".join(f"sink:{n}" for n in configured) or "none"
        raise ConfigError("--to", f"no sink named {sink_name!r} is configured "
                          f"(configured: {names})")
    topic_tables = settings.topic_tables()
    report = ReplayReport(dry_run=dry_run)
    with DeadLetterReader(settings, topic) as reader:
        letters = select(reader.read(_starts(reader, flt, offset)), flt, limit)
    if transform is not None:
        letters = _transform_all(transform, letters, report)
    events: list[tuple[DeadLetter, ChangeEvent]] = []
    for letter in letters:
        if letter.header(H_VALUE_DROPPED) is not None:
            report.skipped[VALUE_DROPPED] += 1
            continue
        try:
            event = decode(letter.key, letter.value)
        except BadDataError as exc:
            report.rejected.append((letter, f"still undecodable: {exc}"))
            continue
        if event is None:
            report.skipped["tombstones"] += 1
            continue
        # Straight into a sink, as the worker would: only into the table of its topic.
        foreign = foreign_table(topic_tables, letter.origin_topic or "", event)
        if foreign is not None:
            report.rejected.append((letter, f"still undecodable: {foreign}"))
        else:
            events.append((letter, event))
    events = _newer_than_applied(settings, sink_name, events, report)
    destination = f"sink:{sink_name}"
    if dry_run:
        report.sent[destination] += len(events)
        return report
    asyncio.run(_write_to_sink(settings, sink_name, events, report))
    return report


#: Why a letter is not replayed: it was written without its value (over Kafka's size limit).
VALUE_DROPPED = (f"without their value (over Kafka's size limit: {H_VALUE_DROPPED} names "
                 "where the record is; re-read it from there)")

#: Why a letter was not written to a sink: its worker applied a newer change of the row.
STALE_FOR_SINK = ("applied already, or older than a change of their row the sink's worker "
                  "applied since (written, a row would come back as it was before it)")


def _newer_than_applied(settings: Settings, sink_name: str, events: list[tuple[Any, Any]],
                        report: ReplayReport) -> list[tuple[Any, Any]]:
    """The letters the sink's worker would still apply: each is checked against the worker's
    dedup seen-set (read from its changelog, only the letters' partitions and rows), as the
    worker checks a record. Without it a letter older than a delete would bring the deleted
    row back into the index once Elasticsearch forgot the delete's version
    (``index.gc_deletes``, 60 s)."""
    from pipeline.dedup import Deduplicator, DedupSettings, Verdict, row_key
    from pipeline.kafka.changelog import ChangelogStore, read_changelog

    d = settings.worker.dedup
    if not d.enabled or not events:
        return events
    keys = [row_key(event) for _, event in events]
    topic = f"{settings.group_id(sink_name)}-dedup-changelog"
    partitions = {letter.origin_partition for letter, _ in events}
    if None in partitions:  # a letter that does not say where it came from: every partition
        partitions = set(range(_partition_count(settings, topic)))
    seen = _Only(set(keys))
    read_changelog(topic, settings.kafka, sorted(p for p in partitions if p is not None),
                   into=seen)
    applied = {key: ChangelogStore.value_of(raw) for key, raw in seen.data.items()}
    dedup = Deduplicator(applied, DedupSettings(window_ms=d.window_ms,
                                                positions_per_row=d.positions_per_row))
    kept = []
    for (letter, event), key in zip(events, keys, strict=True):
        if dedup.classify(event, key) is Verdict.NEW:
            kept.append((letter, event))
        else:
            report.skipped[STALE_FOR_SINK] += 1
    return kept


def _partition_count(settings: Settings, topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    meta = list_topics(AdminClient(client_config(settings.kafka)), 30.0, topic).topics.get(topic)
    return len(meta.partitions) if meta is not None and meta.partitions else 0


class _Only(MutableMapping[str, str]):
    """A mapping that keeps only some keys (a changelog read for a few rows)."""

    def __init__(self, wanted: set[str]) -> None:
        self.wanted = wanted
        self.data: dict[str, str] = {}

    def __getitem__(self, key: str) -> str:
        return self.data[key]

    def __setitem__(self, key: str, value: str) -> None:
        if key in self.wanted:
            self.data[key] = value

    def __delitem__(self, key: str) -> None:
        del self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


async def _write_to_sink(settings: Settings, sink_name: str, events: Sequence[tuple[Any, Any]],
                         report: ReplayReport) -> None:
    from pipeline.compose import build_sinks
    from pipeline.metrics import Metrics

    sinks = build_sinks(settings, Metrics("dlq"))
    try:
        sink = next((s for s in sinks if s.name == sink_name), None)
        if sink is None:
            names = ", ".join(f"sink:{s.name}" for s in sinks) or "none"
            raise CdcError(f"no sink named {sink_name!r} is configured (configured: {names})")
        for start in range(0, len(events), 500):
            chunk = events[start:start + 500]
            rejected = {r.index: r.error for r in await sink.write([e for _, e in chunk])}
            for i, (letter, _) in enumerate(chunk):
                if i in rejected:
                    report.rejected.append((letter, str(rejected[i])))
                else:
                    report.sent[f"sink:{sink_name}"] += 1
    finally:
        for s in sinks:
            await s.close()


# ---------------------------------------------------------------- purge


def purge_plan(settings: Settings, topic: str, up_to: int | None,
               partition: int | None) -> dict[int, tuple[int, int]]:
    """Per partition: (low watermark now, offset to delete before). ``up_to=None``: all."""
    with DeadLetterReader(settings, topic) as reader:
        plan = {p: (low, high if up_to is None else min(up_to, high))
                for p, (low, high) in reader.watermarks.items()
                if partition is None or p == partition}
    return {p: (low, to) for p, (low, to) in plan.items() if to > low}


def purge(settings: Settings, topic: str, plan: dict[int, tuple[int, int]]) -> dict[int, int]:
    """Delete records before the planned offsets; returns each partition's new low watermark."""
    from confluent_kafka.admin import AdminClient

    if not plan:
        return {}
    admin = AdminClient(_client_config(settings))
    futures = admin.delete_records([TopicPartition(topic, p, to) for p, (_, to) in plan.items()],
                                   request_timeout=30, operation_timeout=30)
    try:
        return {tp.partition: f.result().low_watermark for tp, f in futures.items()}
    except KafkaException as exc:
        raise RetriableError(f"could not delete records of {topic}: {exc}") from exc


def render_purge(topic: str, plan: dict[int, tuple[int, int]],
                 result: dict[int, int] | None = None) -> str:
    if not plan:
        return f"{topic}: nothing to delete"
    rows = [[str(p), str(low), str(to), str(to - low) if result is None else str(result[p] - low)]
            for p, (low, to) in sorted(plan.items())]
    head = "delete" if result is None else "deleted"
    return render_table(["partition", "first offset", "delete before", head], rows,
                        right=frozenset({0, 1, 2, 3}))
