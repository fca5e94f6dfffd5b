"""Every Kafka client is built from here: ``kafka.client`` (security) plus
``kafka.bootstrap_servers`` as librdkafka settings (confluent-kafka) or as Faust/aiokafka
credentials, so no client can connect to a secured cluster without them.

A broker that refuses the credentials (a wrong password, an unknown user, a failed TLS
handshake) is a :class:`KafkaAuthError`, raised instead of waiting: librdkafka retries
such connections forever and reports them only through its error callback, so a producer
flushing or a metadata request timing out would otherwise look like an outage.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException

from pipeline.config import KafkaClientSettings, KafkaSettings
from pipeline.errors import PermanentError

#: librdkafka's own log lines go through Python logging (served by each client's poll), so
#: they come out in the pipeline's format instead of as raw ``%6|...`` lines on stderr.
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")
#: Seconds one kind of librdkafka line is shown at most once in (a broker that is down is
#: retried many times a second, by every client: hundreds of lines a minute otherwise).
LOG_EVERY_S = 30.0
_UNREACHABLE = re.compile(r"Connection refused|Connect to .* failed|Failed to resolve|"
                          r"all brokers down", re.IGNORECASE)
#: What changes between two lines of one kind: timings and repeat counts (a broker's
#: address, digits included, tells kinds apart).
_VARYING = re.compile(r"\b\d+(?:\.\d+)?\s*(?:ms|s)\b|\b\d+ identical|\b\d+ (?:more|messages?)\b")


class LogThrottle(logging.Filter):
    """Lets each kind of librdkafka line through once per ``every`` seconds (a kind: its
    facility and text with the numbers left out), saying how many were left out since; the
    first line that says a broker is unreachable names the setting to check."""

    def __init__(self, every: float = LOG_EVERY_S, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.every, self.clock = every, clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}
        self._hinted = False
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        fac, text = (str(args[0]), str(args[-1])) if len(args) >= 2 else ("", record.msg)
        client = str(args[1]) if len(args) >= 3 else ""
        kind = (f"{record.levelno} {fac} {client}", _VARYING.sub("#", str(text)))
        now = self.clock()
        with self._lock:
            shown_at, left_out = self._seen.get(kind, (-self.every, 0))
            if now - shown_at < self.every:
                self._seen[kind] = (shown_at, left_out + 1)
                return False
            self._seen[kind] = (now, 0)
            hint = not self._hinted and bool(_UNREACHABLE.search(str(text)))
            self._hinted = self._hinted or hint
        notes = []
        if left_out:
            notes.append(f"{left_out} more like it in the last {now - shown_at:.0f}s")
        if hint:
            notes.append("is Kafka running at kafka.bootstrap_servers? (cdc stack status)")
        if notes:
            record.msg = f"{record.msg} ({'; '.join(notes)})"
        return True


LIBRDKAFKA_LOG.addFilter(LogThrottle())

#: librdkafka errors that mean the broker refused who we are, not that it is down.
_REFUSED = {KafkaError._AUTHENTICATION, KafkaError._SSL}


class KafkaAuthError(PermanentError):
    """The Kafka cluster refused the client's credentials or its TLS handshake."""


def _raise_if_refused(error: KafkaError) -> None:
    # librdkafka's error_cb: an exception raised here leaves the poll()/flush()/consume()
    # that served it, so a refused client stops at its next call instead of retrying.
    if error.code() in _REFUSED:
        raise KafkaAuthError(
            f"Kafka refused the connection (check kafka.client): {error.str()}")


def security_config(client: KafkaClientSettings) -> dict[str, Any]:
    """librdkafka's security.protocol, sasl.* and ssl.* settings, secrets revealed."""
    conf: dict[str, Any] = {"security.protocol": client.security_protocol}
    if client.sasl_mechanism is not None:
        conf["sasl.mechanism"] = client.sasl_mechanism
    if client.sasl_username is not None:
        conf["sasl.username"] = client.sasl_username
    if client.sasl_password is not None:
        conf["sasl.password"] = client.sasl_password.get_secret_value()
    if client.security_protocol in ("SSL", "SASL_SSL"):
        conf["ssl.endpoint.identification.algorithm"] = (
            "https" if client.ssl_check_hostname else "none")
        paths = {"ssl.ca.location": client.ssl_ca_location,
                 "ssl.certificate.location": client.ssl_certificate_location,
                 "ssl.key.location": client.ssl_key_location}
        conf.update({key: str(path) for key, path in paths.items() if path is not None})
        if client.ssl_key_password is not None:
            conf["ssl.key.password"] = client.ssl_key_password.get_secret_value()
    return conf


def client_config(kafka: KafkaSettings, extra: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Settings for a confluent-kafka Producer, Consumer or AdminClient of ``kafka``:
    bootstrap servers, security, the refusal check, then the client's own ``extra``."""
    return {"bootstrap.servers": kafka.bootstrap_servers, **security_config(kafka.client),
            "error_cb": _raise_if_refused, "logger": LIBRDKAFKA_LOG, **(extra or {})}


def produce_waiting(producer: Any, topic: str, value: bytes | None, key: bytes | None,
                    poll_s: float = 0.1, partition: int = -1, on_delivery: Any = None,
                    headers: Any = None) -> None:
    """``producer.produce`` that waits, serving delivery reports, while the local queue is
    full (``BufferError``) instead of raising: a full queue is back-pressure, not a fault.
    ``partition`` -1: the key chooses."""
    while True:
        try:
            if headers is None:  # positional: as keywords, produce() costs ~0.7 µs more
                producer.produce(topic, value, key, partition, on_delivery)
            else:
                producer.produce(topic, value, key, partition, on_delivery, headers=headers)
            return
        except BufferError:
            producer.poll(poll_s)


def poll_limits(max_poll_interval_ms: int) -> dict[str, Any]:
    """A worker consumer's group timeouts (``worker.max_poll_interval_ms``): the longest
    gap between two polls before the group takes its partitions away, and the session
    timeout, which librdkafka wants no longer than that (45 s, its default, at most)."""
    return {"max.poll.interval.ms": max_poll_interval_ms,
            "session.timeout.ms": min(45_000, max_poll_interval_ms)}


class _Polled(Protocol):
    def poll(self, timeout: float = ...) -> Any: ...


class _Described(_Polled, Protocol):
    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...


def raise_if_refused(client: _Polled, exc: KafkaException | None = None) -> None:
    """After a request of ``client`` failed (a metadata or offsets request times out when
    the broker refuses us), serve its error callbacks: a refusal raises KafkaAuthError
    (chained to ``exc``). Polls a consumer too, so call it only when giving up on it."""
    try:
        client.poll(0)
    except KafkaAuthError as refused:
        raise refused from exc


#: Set when the process is asked to stop (SIGTERM, SIGINT: ``compose.stop_on_signals``):
#: a request waiting for an unreachable Kafka gives up at its next slice instead of at its
#: timeout (a capture took 24 s to stop while Kafka was down).
STOPPING = threading.Event()


def list_topics(client: _Described, timeout: float, topic: str | None = None) -> Any:
    """``client.list_topics`` asked in one-second slices until ``timeout``, checking for a
    refusal between them: a wrong password surfaces in about a second, not at the timeout;
    and for :data:`STOPPING`: a stopping process does not wait out the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        step = max(min(1.0, deadline - time.monotonic()), 0.1)
        try:
            return client.list_topics(topic, timeout=step)
        except KafkaException as exc:
            raise_if_refused(client, exc)
            if time.monotonic() >= deadline or STOPPING.is_set():
                raise


def ssl_context(client: KafkaClientSettings) -> ssl.SSLContext | None:
    """The TLS context aiokafka needs for SSL and SASL_SSL (None for plaintext)."""
    if client.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(
        cafile=None if client.ssl_ca_location is None else str(client.ssl_ca_location))
    context.check_hostname = client.ssl_check_hostname
    if client.ssl_certificate_location is not None and client.ssl_key_location is not None:
        password = client.ssl_key_password
        context.load_cert_chain(str(client.ssl_certificate_location),
                                str(client.ssl_key_location),
                                None if password is None else password.get_secret_value())
    return context


def faust_credentials(client: KafkaClientSettings) -> Any:
    """``faust.App(broker_credentials=...)`` for these settings; None for PLAINTEXT."""
    from faust.auth import SASLCredentials, SSLCredentials

    context = ssl_context(client)
    if client.security_protocol.startswith("SASL_"):
        assert client.sasl_password is not None  # checked by KafkaClientSettings
        return SASLCredentials(username=client.sasl_username,
                               password=client.sasl_password.get_secret_value(),
                               mechanism=client.sasl_mechanism, ssl_context=context)
    if context is not None:
        return SSLCredentials(context)
    return None
