"""Settings: YAML file + CDC_* environment overrides, errors that name the setting, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ElasticsearchSettings, load_settings
from pipeline.errors import ConfigError

MINIMAL = "postgres:\n  tables: [public.orders]\n"

FULL = """
postgres:
  dsn: "host=db port=5432 user=cdc password=pg-Secret-1 dbname=shop"
  tables: [public.orders, inventory.products]
kafka:
  bootstrap_servers: "kafka:9092"
  partitions: 3
elasticsearch:
  url: "http://es:9200"
  username: elastic
  password: es-Secret-2
  indices:
    inventory.products: products-v2
redis:
  url: "redis://:redis-Secret-3@cache:6379/0"
  keys:
    inventory.products: ["product:{id}", "sku:{sku}"]
"""

SECRETS = ("pg-Secret-1", "es-Secret-2", "redis-Secret-3")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cdc.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text), env or {})
    return info.value


def test_file_values_are_read(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, FULL), {})
    assert s.postgres.tables == ("public.orders", "inventory.products")
    assert s.kafka.bootstrap_servers == "kafka:9092"
    assert s.elasticsearch is not None and s.elasticsearch.username == "elastic"
    assert s.redis is not None
    assert s.redis.keys["inventory.products"] == ("product:{id}", "sku:{sku}")
    assert s.raw_topics() == ("cdc.public.orders", "cdc.inventory.products")


def test_optional_sections_off_by_default(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, MINIMAL), {})
    assert s.elasticsearch is None
    assert s.redis is None
    assert s.kafka.partitions == 3  # documented default


def test_env_overrides_file_typed_as_yaml_scalars(tmp_path: Path) -> None:
    env = {
        "CDC_KAFKA__PARTITIONS": "6",
        "CDC_KAFKA__TOMBSTONES_ON_DELETE": "false",
        "CDC_KAFKA__BOOTSTRAP_SERVERS": "broker:29092",
        "CDC_POSTGRES__TABLES": "[public.a, public.b]",
        "CDC_ELASTICSEARCH__TIMEOUT_S": "2.5",
        "CDC_WORKER__BATCH_SIZE": "50",
    }
    s = load_settings(_write(tmp_path, FULL), env)
    assert s.kafka.partitions == 6
    assert s.kafka.tombstones_on_delete is False
    assert s.kafka.bootstrap_servers == "broker:29092"
    assert s.postgres.tables == ("public.a", "public.b")
    assert s.elasticsearch is not None and s.elasticsearch.timeout_s == 2.5
    # untouched file values stay
    assert s.elasticsearch.username == "elastic"
    assert s.worker.batch_size == 50


def test_env_can_turn_on_a_section_without_a_file() -> None:
    env = {
        "CDC_POSTGRES__TABLES": "[public.orders]",
        "CDC_REDIS__URL": "redis://cache:6379/1",
        "CDC_REDIS__CHANNEL": "invalidations",
    }
    s = load_settings(None, env)
    assert s.redis is not None
    assert s.redis.channel == "invalidations"
    assert s.redis.url.get_secret_value() == "redis://cache:6379/1"


def test_cdc_config_env_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL)
    s = load_settings(None, {"CDC_CONFIG": str(path)})
    assert s.postgres.tables == ("public.orders",)


def test_unrelated_env_ignored(tmp_path: Path) -> None:
    env = {"PATH": "/bin", "CDC_SOMETHING": "x", "KAFKA__PARTITIONS": "9"}
    assert load_settings(_write(tmp_path, MINIMAL), env).kafka.partitions == 3


def test_bad_value_names_the_setting(tmp_path: Path) -> None:
    err = _error(tmp_path, MINIMAL, {"CDC_KAFKA__PARTITIONS": "0"})
    assert err.setting == "kafka.partitions"
    assert "kafka.partitions" in str(err)


def test_non_integer_partitions_named(tmp_path: Path) -> None:
    err = _error(tmp_path, MINIMAL + "kafka:\n  partitions: many\n")
    assert err.setting == "kafka.partitions"


def test_missing_tables_named(tmp_path: Path) -> None:
    err = _error(tmp_path, "postgres:\n  slot: my_slot\n")
    assert err.setting == "postgres.tables"
    assert "required" in str(err)


def test_missing_postgres_section_named(tmp_path: Path) -> None:
    err = _error(tmp_path, "kafka:\n  partitions: 2\n")
    assert err.setting == "postgres"


def test_typo_is_an_unknown_setting(tmp_path: Path) -> None:
    err = _error(tmp_path, MINIMAL + "kafka:\n  bootstrap: kafka:9092\n")
    assert err.setting == "kafka.bootstrap"
    assert "unknown setting" in str(err)


def test_typo_in_env_is_an_unknown_setting(tmp_path: Path) -> None:
    err = _error(tmp_path, MINIMAL, {"CDC_KAFKA__BOOTSTRAP": "kafka:9092"})
    assert err.setting == "kafka.bootstrap"
    assert "unknown setting" in str(err)


@pytest.mark.parametrize("table", ["orders", "public.orders.extra", "1abc.orders", "public."])
def test_bad_table_id(tmp_path: Path, table: str) -> None:
    err = _error(tmp_path, f"postgres:\n  tables: ['{table}']\n")
    assert err.setting == "postgres.tables"
    assert table in str(err)


def test_bad_index_mapping_table_id(tmp_path: Path) -> None:
    err = _error(tmp_path, MINIMAL + "elasticsearch:\n  indices:\n    orders: idx\n")
    assert err.setting == "elasticsearch.indices"


def test_redis_template_without_column(tmp_path: Path) -> None:
    err = _error(tmp_path, MINIMAL + "redis:\n  keys:\n    public.orders: ['order-cache']\n")
    assert err.setting == "redis.keys"
    assert "order-cache" in str(err)


def test_bad_slot_name(tmp_path: Path) -> None:
    err = _error(tmp_path, MINIMAL, {"CDC_POSTGRES__SLOT": "My-Slot"})
    assert err.setting == "postgres.slot"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "nope.yaml", {})
    assert "nope.yaml" in str(info.value)
    assert "does not exist" in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_yaml(tmp_path: Path, text: str) -> None:
    err = _error(tmp_path, text)
    assert "mapping" in str(err)


def test_invalid_yaml(tmp_path: Path) -> None:
    err = _error(tmp_path, "postgres: [unclosed\n")
    assert "YAML" in str(err)


def test_secrets_redacted(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, FULL), {})
    dumped = repr(s.redacted())
    for secret in SECRETS:
        assert secret not in dumped
        assert secret not in repr(s)
        assert secret not in str(s)
    assert s.redacted()["postgres"]["dsn"] == "**********"
    assert s.redacted()["elasticsearch"]["password"] == "**********"
    assert s.redacted()["redis"]["url"] == "**********"
    # the values themselves are still usable
    assert "pg-Secret-1" in s.postgres.dsn.get_secret_value()
    assert s.elasticsearch is not None and s.elasticsearch.password is not None
    assert s.elasticsearch.password.get_secret_value() == "es-Secret-2"


def test_secrets_from_env_redacted(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, MINIMAL), {"CDC_POSTGRES__DSN": "password=env-Secret-4"})
    assert "env-Secret-4" not in repr(s.redacted())
    assert "env-Secret-4" not in repr(s)


def test_kafka_client_password_redacted(tmp_path: Path) -> None:
    text = MINIMAL + (
        "kafka:\n  client:\n    security_protocol: SASL_PLAINTEXT\n"
        "    sasl_mechanism: SCRAM-SHA-256\n    sasl_username: cdc\n"
        "    sasl_password: kafka-Secret-5\n"
    )
    s = load_settings(_write(tmp_path, text), {})
    assert "kafka-Secret-5" not in repr(s.redacted())
    assert "kafka-Secret-5" not in repr(s)


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, MINIMAL), {})
    with pytest.raises(Exception):  # noqa: B017 - pydantic's ValidationError
        s.kafka.partitions = 9  # type: ignore[misc]


def test_index_for_default_and_override() -> None:
    es = ElasticsearchSettings(indices={"inventory.products": "products-v2"})
    assert es.index_for("public.orders") == "cdc.public.orders"
    assert es.index_for("inventory.products") == "products-v2"
    # Elasticsearch index names must be lower case
    assert es.index_for("Public.Orders") == "cdc.public.orders"
    shop = ElasticsearchSettings(index_prefix="shop-")
    assert shop.index_for("public.orders") == "shop-public.orders"


def test_a_table_name_kafka_refuses_in_a_topic_gets_a_safe_topic() -> None:
    """`$` is valid in a table's name but not in a topic's: capture stopped at start."""
    settings = load_settings(None, {"CDC_POSTGRES__DSN": "dbname=x",
                                    "CDC_POSTGRES__TABLES": "[shop.price$eur, shop.items]"})
    assert settings.kafka.raw_topic("shop.price$eur") == "cdc.shop.price_eur"
    assert settings.kafka.raw_topic("shop.items") == "cdc.shop.items"
    assert settings.topic_tables()["cdc.shop.price_eur"] == "shop.price$eur"


def test_a_list_given_as_text_says_how_to_write_it() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(None, {"CDC_POSTGRES__DSN": "dbname=x",
                             "CDC_POSTGRES__TABLES": "shop.items, shop.orders"})
    assert "CDC_POSTGRES__TABLES='[shop.items, shop.orders]'" in str(refused.value)


def test_two_tables_that_would_share_a_topic_are_refused() -> None:
    with pytest.raises(ConfigError, match="would share the topic cdc.shop.a_b"):
        load_settings(None, {"CDC_POSTGRES__DSN": "dbname=x",
                             "CDC_POSTGRES__TABLES": "[shop.a$b, shop.a_b]"})


def test_two_tables_that_would_share_a_search_index_are_refused() -> None:
    """Index names are lower case: shop.Items and shop.items wrote into one index, each
    overwriting the other's documents (and verify called the other's rows extra)."""
    env = {"CDC_POSTGRES__DSN": "dbname=x", "CDC_POSTGRES__TABLES": "[shop.Items, shop.items]",
           "CDC_ELASTICSEARCH__URL": "http://127.0.0.1:9200"}
    with pytest.raises(ConfigError, match="would share the search index cdc.shop.items"):
        load_settings(None, env)
    own = load_settings(None, {**env, "CDC_ELASTICSEARCH__INDICES": "{shop.Items: upper_items}"})
    assert own.elasticsearch is not None
    assert own.elasticsearch.index_for("shop.Items") == "upper_items"
    with pytest.raises(ConfigError, match="share the search index cdc.shop.items"):
        load_settings(None, {**env, "CDC_POSTGRES__TABLES": "[shop.items, shop.other]",
                             "CDC_ELASTICSEARCH__INDICES": "{shop.other: cdc.shop.items}"})


def test_a_table_whose_index_is_another_tables_version_name_is_refused() -> None:
    """The sink writes shop.items through the concrete index cdc.shop.items_v1: the table
    shop.items_v1 would write into it (or be refused, whichever came first)."""
    with pytest.raises(ConfigError, match="takes for its versions"):
        load_settings(None, {"CDC_POSTGRES__DSN": "dbname=x",
                             "CDC_POSTGRES__TABLES": "[shop.items, shop.items_v1]",
                             "CDC_ELASTICSEARCH__URL": "http://127.0.0.1:9200"})
