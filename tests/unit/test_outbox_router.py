"""The outbox router: Debezium's outbox event router semantics, and bad events refused."""

from __future__ import annotations

import orjson
import pytest

from pipeline.capture.source import ANY_PARTITION
from pipeline.config import KafkaSettings, OutboxSettings, load_settings
from pipeline.deadletter import H_MESSAGE, H_STAGE, H_TOPIC
from pipeline.errors import BadOutboxEvent, ConfigError
from pipeline.metrics import Metrics
from pipeline.positions import Lsn
from pipeline.sources.outbox import exact_json
from pipeline.sources.outbox.exact_json import ExactNumber
from pipeline.sources.outbox.logical import LogicalOutbox
from pipeline.sources.outbox.router import OutboxEvent, OutboxRouter
from pipeline.sources.postgres.pgoutput import Message

EVENT_ID = "4d47e190-0402-4048-bc2c-89dd54343cdc"


def _event(**changes: object) -> OutboxEvent:
    fields: dict[str, object] = {
        "id": EVENT_ID, "aggregate_type": "order", "aggregate_id": "1",
        "type": "OrderCreated", "payload": '{"id": 1, "lineItems": [{"qty": 2}]}',
        "headers": None, "extra": {},
    }
    fields.update(changes)
    return OutboxEvent(**fields)  # type: ignore[arg-type]


def _router(**settings: object) -> OutboxRouter:
    return OutboxRouter(OutboxSettings(**settings), "cdc.dead-letter")  # type: ignore[arg-type]


def test_default_routing_is_debeziums() -> None:
    topic, key, value, partition, headers = _router().route(_event())
    assert topic == "outbox.event.order"
    assert key == b"1"
    assert orjson.loads(value or b"") == {"id": 1, "lineItems": [{"qty": 2}]}
    assert partition == ANY_PARTITION
    assert headers == [("id", EVENT_ID.encode()), ("type", b"OrderCreated")]


def test_topic_template_with_debeziums_placeholder_and_type() -> None:
    router = _router(topic_template="shop.${routedByValue}.{type}")
    assert router.route(_event())[0] == "shop.order.OrderCreated"


def test_event_headers_column_becomes_kafka_headers() -> None:
    headers = _router().route(_event(headers='{"traceparent": "00-ab", "attempt": 2}'))[4]
    assert ("traceparent", b"00-ab") in headers
    assert ("attempt", b"2") in headers
    assert headers[0] == ("id", EVENT_ID.encode())


def test_envelope_placement_wraps_the_payload() -> None:
    router = _router(additional_placement=("type:envelope:eventType",
                                           "tenant:header", "aggregatetype:header:agg"))
    event = _event(extra={"tenant": "acme"})
    _topic, _key, value, _p, headers = router.route(event)
    assert orjson.loads(value or b"") == {"payload": {"id": 1, "lineItems": [{"qty": 2}]},
                                          "eventType": "OrderCreated"}
    assert ("tenant", b"acme") in headers and ("agg", b"order") in headers
    assert router.extra_columns == ("tenant",)


def test_null_payload_is_a_null_value() -> None:
    assert _router().route(_event(payload=None))[2] is None


def test_parsed_payload_from_a_message_is_encoded() -> None:
    assert orjson.loads(_router().route(_event(payload={"a": [1]}))[2] or b"") == {"a": [1]}


@pytest.mark.parametrize("aggregate_type", ["bad type!", "", "ünicode", "a" * 300, ".."])
def test_aggregate_type_that_makes_no_topic_name_is_refused(aggregate_type: str) -> None:
    router = _router(topic_template="{aggregatetype}")
    with pytest.raises(BadOutboxEvent, match="not a valid Kafka topic name"):
        router.route(_event(aggregate_type=aggregate_type))


def test_payload_that_is_not_json_is_refused_with_the_text() -> None:
    with pytest.raises(BadOutboxEvent, match=r"payload is not valid JSON.*'\{not json'"):
        _router().route(_event(payload="{not json"))


def test_headers_that_are_not_an_object_are_refused() -> None:
    with pytest.raises(BadOutboxEvent, match="headers must be a JSON object"):
        _router().route(_event(headers="[1, 2]"))


def test_event_larger_than_the_limit_is_refused_before_kafka() -> None:
    router = _router(max_message_bytes=2048)
    with pytest.raises(BadOutboxEvent, match="more than outbox.max_message_bytes"):
        router.route(_event(payload=orjson.dumps({"blob": "x" * 4000}).decode()))


def test_dead_letter_keeps_the_original_and_says_why_without_a_replay_topic() -> None:
    error = BadOutboxEvent("event x: payload is not valid JSON")
    topic, key, value, _p, headers = _router().dead_letter(
        "table public.outbox", "0/16B3748", b"1", b'{"payload": "{no"}', error, "capture")
    assert topic == "cdc.dead-letter" and key == b"1" and value == b'{"payload": "{no"}'
    named = dict(headers)
    assert named[H_STAGE] == b"outbox"
    assert named[H_MESSAGE] == b"event x: payload is not valid JSON"
    assert named["cdc.outbox.source"] == b"table public.outbox"
    assert H_TOPIC not in named  # `cdc dlq replay --to raw` must not invent a topic


@pytest.mark.parametrize("template", ["outbox.{aggregate}", "bad topic {aggregatetype}",
                                      "x.{0}"])
def test_bad_topic_template_is_a_config_error(template: str) -> None:
    with pytest.raises(ConfigError, match="outbox.topic_template"):
        load_settings(None, {"CDC_POSTGRES__TABLES": "[public.items]",
                             "CDC_OUTBOX__TOPIC_TEMPLATE": template})


def test_bad_placement_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="outbox.additional_placement"):
        load_settings(None, {"CDC_POSTGRES__TABLES": "[public.items]",
                             "CDC_OUTBOX__ADDITIONAL_PLACEMENT": "[type:body]"})


def test_outbox_table_listed_for_the_logical_source_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="remove it from postgres.tables"):
        load_settings(None, {"CDC_POSTGRES__TABLES": "[public.items, public.outbox]",
                             "CDC_OUTBOX__TABLE": "public.outbox"})
    relay = load_settings(None, {"CDC_POSTGRES__TABLES": "[public.outbox]",
                                 "CDC_CAPTURE__SOURCE": "outbox",
                                 "CDC_OUTBOX__TABLE": "public.outbox"})
    assert relay.capture.source == "outbox"


def test_payload_numbers_are_published_exactly_as_stored() -> None:
    """Parsed to doubles and written again, 12345678901234567.89 and a 30-digit id were
    rounded, and 1e400 (valid JSON, which PostgreSQL accepts) failed the event."""
    text = '{"amount": 12345678901234567.89, "id": 123456789012345678901234567890, "x": 1e400}'
    value = _router().route(_event(payload=text))[2]
    assert value == text.encode()
    router = _router(additional_placement=("type:envelope:eventType",))
    wrapped = router.route(_event(payload=text))[2]
    assert wrapped == b'{"payload":' + text.encode() + b',"eventType":"OrderCreated"}'
    assert _router().route(_event(payload="null"))[2] is None
    for bad in ('{"x": NaN}', '{"x": 1', "[1,]"):
        with pytest.raises(BadOutboxEvent, match="not valid JSON"):
            _router().route(_event(payload=bad))


def test_event_headers_may_not_set_a_header_the_relay_sets() -> None:
    """A second 'id' header: a consumer that reads headers into a dict, or drops repeats by
    id, would take two events for one."""
    for name in ("id", "type"):
        with pytest.raises(BadOutboxEvent, match=f"'{name}'"):
            _router().route(_event(headers=orjson.dumps({name: "spoofed"}).decode()))


def test_a_payload_nested_deeper_than_the_parsers_go_fails_its_event_not_capture() -> None:
    """orjson refuses more than 1024 levels; the exact-number parser then recursed out:
    a RecursionError escaped route() and stopped capture at the same event every time."""
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(BadOutboxEvent, match="not valid JSON"):
        _router().route(_event(payload=deep))
    # a null header is left out, so naming a relay header with it clashes with nothing
    assert _router().route(_event(headers='{"type": null}'))[4][1] == ("type", b"OrderCreated")


def _logical() -> LogicalOutbox:
    logical = LogicalOutbox(OutboxSettings(), _router(), KafkaSettings(), Metrics("capture"))
    logical._topics.update({"outbox.event.order", "cdc.dead-letter"})  # no Kafka here
    return logical


def test_message_payload_numbers_are_published_exactly_as_written() -> None:
    """A pg_logical_emit_message() event (outbox.emit) was parsed by orjson: a 30-digit id
    and 12345678901234567.89 were rounded, a 30-digit aggregate id became the key
    b'1.2345678901234568e+29', and 1e400 sent the event to the dead-letter topic."""
    big = "123456789012345678901234567890"
    content = ('{"id": "' + EVENT_ID + '", "aggregatetype": "order", "aggregateid": ' + big
               + ', "type": "Paid", "payload": {"amount": 12345678901234567.89, "id": ' + big
               + ', "x": 1e400, "small": [1.5, -2, 18446744073709551616]}, '
               '"headers": {"n": 1e400}}')
    out: list = []
    _logical().message(Message(True, Lsn(1), "outbox", content.encode()), 1, out)
    ((topic, key, value, _, headers),) = out
    assert topic == "outbox.event.order" and key == big.encode()
    assert value == (b'{"amount":12345678901234567.89,"id":' + big.encode()
                     + b',"x":1e400,"small":[1.5,-2,18446744073709551616]}')
    assert ("n", b"1e400") in headers


def test_message_that_is_not_json_goes_to_the_dead_letter_topic() -> None:
    for bad in (b'{"id": NaN}', b"[" * 5000, b'{"id": "\\ud800", "aggregatetype": "order", '
                b'"aggregateid": "1", "payload": "\\ud800"}'):
        out: list = []
        _logical().message(Message(True, Lsn(1), "outbox", bad), 1, out)
        ((topic, _, value, _, headers),) = out
        assert topic == "cdc.dead-letter" and value == bad
        assert b"JSON" in dict(headers)[H_MESSAGE], dict(headers)[H_MESSAGE]


def test_exact_json_keeps_what_orjson_holds_as_parsed() -> None:
    assert exact_json.loads(b'{"a": [1, "x", null, true, -9223372036854775808]}', "t") == {
        "a": [1, "x", None, True, -9223372036854775808]}
    assert exact_json.loads("2.50", "t") == ExactNumber("2.50")
    assert exact_json.dumps({"v": ExactNumber("2.50")}, "t") == b'{"v":2.50}'


def test_deep_and_long_payloads_that_are_valid_json_are_published_as_stored() -> None:
    """Checking them by writing them again refused a payload nested 255 levels deep with a
    fraction in it (orjson writes at most 254), and int() one with a 4301-digit number."""
    for text in ("[" * 255 + "1.5" + "]" * 255, '{"n": ' + "9" * 4301 + "}"):
        assert _router().route(_event(payload=text))[2] == text.encode()
