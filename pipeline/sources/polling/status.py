"""What ``cdc status`` says of polling: each table's watermark kept in Kafka."""

from __future__ import annotations

from pipeline.capture.offsets import OffsetStore
from pipeline.config import Settings
from pipeline.positions import PollPosition


def position_identity(topic_prefix: str) -> dict[str, str]:
    """The key of polling's watermarks in ``kafka.offsets_topic`` (one record)."""
    return {"source": "polling", "server": topic_prefix}


def offset_store(settings: Settings) -> OffsetStore:
    return OffsetStore(settings.kafka, position_identity(settings.kafka.topic_prefix))


def watermark_lines(settings: Settings) -> list[str]:
    saved = offset_store(settings).load()
    try:
        position = None if saved is None else PollPosition.decode(saved)
    except ValueError:
        return [f"polling: the position kept in {settings.kafka.offsets_topic} is unreadable"]
    lines = []
    for table in settings.postgres.tables:
        mark = None if position is None else position.watermarks.get(table)
        lines.append(f"polling {table}: " + (
            "no row published yet" if mark is None else
            f"published up to ({', '.join(mark.columns)}) = ({mark.ts}, "
            f"{', '.join(mark.key)})"))
    return lines
