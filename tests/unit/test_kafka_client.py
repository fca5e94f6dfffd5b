"""kafka.client: one security section, turned into librdkafka and Faust settings."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from faust.auth import SASLCredentials, SSLCredentials

from pipeline.config import KafkaSettings, load_settings
from pipeline.errors import ConfigError, PermanentError
from pipeline.kafka.client import (
    KafkaAuthError,
    client_config,
    faust_credentials,
    raise_if_refused,
)

SCRAM_ENV = {
    "CDC_POSTGRES__TABLES": "[public.items]",
    "CDC_KAFKA__BOOTSTRAP_SERVERS": "broker:9093",
    "CDC_KAFKA__CLIENT__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "CDC_KAFKA__CLIENT__SASL_MECHANISM": "SCRAM-SHA-256",
    "CDC_KAFKA__CLIENT__SASL_USERNAME": "cdc",
    "CDC_KAFKA__CLIENT__SASL_PASSWORD": "pa55-word",
}


def test_plaintext_by_default() -> None:
    conf = client_config(KafkaSettings(bootstrap_servers="b:1"), {"group.id": "g"})
    assert conf["bootstrap.servers"] == "b:1"
    assert conf["security.protocol"] == "PLAINTEXT"
    assert conf["group.id"] == "g"
    assert not any(k.startswith(("sasl.", "ssl.")) for k in conf)
    assert faust_credentials(KafkaSettings().client) is None


def test_scram_from_the_environment_reaches_both_client_kinds() -> None:
    kafka = load_settings(None, SCRAM_ENV).kafka
    conf = client_config(kafka)
    assert (conf["security.protocol"], conf["sasl.mechanism"], conf["sasl.username"],
            conf["sasl.password"]) == ("SASL_PLAINTEXT", "SCRAM-SHA-256", "cdc", "pa55-word")
    creds = faust_credentials(kafka.client)
    assert isinstance(creds, SASLCredentials)
    assert (creds.protocol.value, creds.mechanism.value, creds.username, creds.password) == (
        "SASL_PLAINTEXT", "SCRAM-SHA-256", "cdc", "pa55-word")
    assert "pa55-word" not in repr(kafka)


@pytest.mark.parametrize("missing", ["SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD"])
def test_sasl_without_a_credential_is_a_config_error(missing: str) -> None:
    env = {k: v for k, v in SCRAM_ENV.items() if not k.endswith(missing)}
    with pytest.raises(ConfigError) as err:
        load_settings(None, env)
    assert err.value.setting == "kafka.client"
    assert missing.lower() in err.value.problem


def test_sasl_settings_without_a_sasl_protocol_are_refused() -> None:
    env = {**SCRAM_ENV, "CDC_KAFKA__CLIENT__SECURITY_PROTOCOL": "PLAINTEXT"}
    with pytest.raises(ConfigError, match="SASL_PLAINTEXT or SASL_SSL"):
        load_settings(None, env)


@pytest.mark.parametrize(("key", "setting"), [
    ("sasl.password", "kafka.client.sasl_password"),
    ("security.protocol", "kafka.client.security_protocol"),
    ("ssl.ca.location", "kafka.client.ssl_ca_location"),
])
def test_security_keys_of_kafka_producer_name_their_new_setting(key: str, setting: str) -> None:
    env = {"CDC_POSTGRES__TABLES": "[public.items]"}
    with pytest.raises(ConfigError) as err:
        load_settings(None, env | {"CDC_KAFKA__PRODUCER": f"{{'{key}': x}}"})
    assert err.value.setting == "kafka.producer"
    assert setting in err.value.problem


def test_unsupported_security_key_of_kafka_producer_is_refused() -> None:
    env = {"CDC_POSTGRES__TABLES": "[public.items]",
           "CDC_KAFKA__PRODUCER": "{'sasl.kerberos.principal': x}"}
    with pytest.raises(ConfigError, match="not supported"):
        load_settings(None, env)


def test_kafka_producer_may_not_turn_off_the_delivery_reports_capture_confirms_by() -> None:
    env = {"CDC_POSTGRES__TABLES": "[public.items]",
           "CDC_KAFKA__PRODUCER": "{'delivery.report.only.error': true}"}
    with pytest.raises(ConfigError, match="delivery report") as err:
        load_settings(None, env)
    assert err.value.setting == "kafka.producer"
    assert "remove the setting" in err.value.problem


def test_ssl_with_a_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    env = {"CDC_POSTGRES__TABLES": "[public.items]",
           "CDC_KAFKA__CLIENT__SECURITY_PROTOCOL": "SSL",
           "CDC_KAFKA__CLIENT__SSL_CA_LOCATION": str(tmp_path / "nope.pem")}
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(None, env)


def test_ssl_reaches_both_client_kinds() -> None:
    ca = ssl.get_default_verify_paths().cafile
    if ca is None or not Path(ca).is_file():
        pytest.skip("no system CA bundle file")
    env = {"CDC_POSTGRES__TABLES": "[public.items]",
           "CDC_KAFKA__CLIENT__SECURITY_PROTOCOL": "SSL",
           "CDC_KAFKA__CLIENT__SSL_CA_LOCATION": ca,
           "CDC_KAFKA__CLIENT__SSL_CHECK_HOSTNAME": "false"}
    kafka = load_settings(None, env).kafka
    conf = client_config(kafka)
    assert conf["ssl.ca.location"] == ca
    assert conf["ssl.endpoint.identification.algorithm"] == "none"
    creds = faust_credentials(kafka.client)
    assert isinstance(creds, SSLCredentials)
    assert creds.context.check_hostname is False


class _Refused:
    """A client whose poll serves an authentication error, as librdkafka does."""

    def __init__(self, code: int) -> None:
        self.code = code

    def poll(self, timeout: float = 0) -> None:
        client_config(KafkaSettings())["error_cb"](KafkaError(self.code, "bad credentials"))


def test_a_refused_login_is_a_permanent_error() -> None:
    with pytest.raises(KafkaAuthError, match="bad credentials") as err:
        raise_if_refused(_Refused(KafkaError._AUTHENTICATION))
    assert isinstance(err.value, PermanentError)


def test_other_client_errors_are_left_to_librdkafka() -> None:
    raise_if_refused(_Refused(KafkaError._ALL_BROKERS_DOWN))  # no exception: it retries


class _Unreachable:
    """A client whose metadata requests wait out their timeout: Kafka is down."""

    def __init__(self) -> None:
        self.asked = 0

    def poll(self, timeout: float = 0) -> None:
        pass

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> None:
        self.asked += 1
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down"))


def test_a_stopping_process_does_not_wait_out_a_metadata_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A capture took 24 s to stop on SIGTERM while Kafka was down (a 30 s request)."""
    import threading

    from pipeline.kafka import client
    monkeypatch.setattr(client, "STOPPING", threading.Event())
    unreachable = _Unreachable()
    client.STOPPING.set()
    with pytest.raises(KafkaException):
        client.list_topics(unreachable, timeout=30)
    assert unreachable.asked == 1
    client.STOPPING.clear()
    with pytest.raises(KafkaException):
        client.list_topics(unreachable, timeout=0.3)  # not stopping: until the timeout
    assert unreachable.asked >= 3
