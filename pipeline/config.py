"""Settings: one YAML file plus environment overrides, validated at start.

Each component reads only its own small frozen section; ``None`` for an optional section
means that part is off. An environment variable ``CDC_<SECTION>__<FIELD>`` (double
underscore between levels) overrides the file, e.g. ``CDC_KAFKA__BOOTSTRAP_SERVERS``.
Values in the environment are read as YAML scalars, so ``CDC_KAFKA__PARTITIONS=6`` is an int.
Secrets (DSNs, passwords, header values) are ``SecretStr``: printing a setting never shows
them. Credentials written into a URL (``http://user:password@host``) are moved out of it into
the section's ``username``/``password`` as it is read, so a URL can be printed and logged.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError

_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*$")
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
_SECRET_KEY = re.compile(r"password|secret|sasl\.oauthbearer\.config", re.IGNORECASE)
#: Keys whose values are hidden in the entries of ``sinks`` whatever the sink's own model says.
_SECRET_ENTRY_KEY = re.compile(
    r"password|passwd|secret|token|credential|authorization|api[_-]?key|headers|dsn",
    re.IGNORECASE)
HIDDEN = "**********"


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its ``user:password@`` part, and that user and password (decoded)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    bare = urlunsplit(parts._replace(netloc=hostport))
    return bare, unquote(user) or None, unquote(password) if colon else None


def without_userinfo(url: str) -> str:
    """``url`` fit for a log line: any credentials in it removed."""
    return split_userinfo(url)[0]


def credentials_out_of_url(data: Any, section: str) -> Any:
    """A ``model_validator(mode="before")`` step: ``user:password@`` in ``url`` moves to
    ``username``/``password``, so the URL never holds a secret."""
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return data
    bare, user, password = split_userinfo(data["url"])
    if user is None and password is None:
        return data
    if data.get("username") is not None or data.get("password") is not None:
        raise ValueError(f"{section}: give credentials either in the url or as "
                         "username/password, not both")
    return {**data, "url": bare, "username": user, "password": password}


def _hide_entry_secrets(value: Any, key: str = "") -> Any:
    """Plain data with the values of secret-looking keys hidden and URLs without userinfo."""
    if isinstance(value, dict):
        if _SECRET_ENTRY_KEY.search(key):
            return {k: HIDDEN for k in value}
        return {k: _hide_entry_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_hide_entry_secrets(v, key) for v in value]
    if value is not None and _SECRET_ENTRY_KEY.search(key):
        return HIDDEN
    if isinstance(value, str) and "://" in value:
        return without_userinfo(value)
    return value


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_table_ids(tables: Any) -> Any:
    for table in tables:
        if not _TABLE_RE.match(table):
            raise ValueError(f"'{table}' is not of the form schema.table")
    return tables


def _check_table_id_or_none(table: str | None) -> str | None:
    if table is not None:
        _check_table_ids([table])
    return table


#: What Elasticsearch allows in an index name (lower case, none of \\/*?"<>|,#: or space,
#: not starting with -_+); a name is also a URL path segment, so this keeps it one.
_INDEX_RE = re.compile(r"^[a-z0-9.][a-z0-9._+$-]*$")


def _check_index_name(name: str) -> None:
    if not _INDEX_RE.match(name) or name in (".", "..") or len(name.encode()) > 255:
        raise ValueError(f"'{name}' is not an Elasticsearch index name (lower-case letters, "
                         f"digits and . _ - + $, not starting with _ - +)")


class TableColumnSettings(_Section):
    """Which columns of one table reach Kafka, and how (applied at capture, so a value
    masked or left out never reaches a topic, a dead letter or a sink). Debezium's
    ``column.include.list``/``column.exclude.list``, ``column.mask.with.N.chars`` and
    ``column.mask.hash.SHA-256.with.salt.<salt>``, by exact column name per table."""

    #: Only these columns (and always the key columns); exclusive with ``exclude``.
    include: tuple[str, ...] = ()
    #: Every column but these (never a key column).
    exclude: tuple[str, ...] = ()
    #: column -> N: a non-null value becomes N asterisks (never a key column).
    mask: dict[str, int] = Field(default_factory=dict)
    #: Columns whose non-null values become the hex SHA-256 of ``hash_salt`` + the value
    #: (still joinable, not readable); a key column may be hashed (the key is then hashed).
    hash: tuple[str, ...] = ()
    #: Required with ``hash``: an unsalted hash of an e-mail address is a lookup away.
    hash_salt: SecretStr | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TableColumnSettings:
        if self.include and self.exclude:
            raise ValueError("give include or exclude, not both")
        if self.hash and (self.hash_salt is None or not self.hash_salt.get_secret_value()):
            raise ValueError("hash needs a hash_salt (an unsalted hash is reversible by a "
                             "dictionary of likely values)")
        if any(n < 0 for n in self.mask.values()):
            raise ValueError("mask lengths must be 0 or more")
        both = set(self.mask) & set(self.hash)
        if both:
            raise ValueError(f"{', '.join(sorted(both))}: masked and hashed both")
        return self


class PostgresSettings(_Section):
    """The PostgreSQL source (logical replication with pgoutput)."""

    dsn: SecretStr = SecretStr("host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    slot: str = "cdc_slot"
    publication: str = "cdc_publication"
    tables: tuple[str, ...] = Field(min_length=1)
    #: How often (s) the confirmed position is reported to the server when nothing happens.
    status_interval_s: float = Field(default=1.0, gt=0)
    #: Debezium's heartbeat.interval.ms (in s): a record on ``__debezium-heartbeat.<prefix>``
    #: this often, and the action query run, so an idle slot keeps moving. None: off.
    heartbeat_interval_s: float | None = Field(default=None, gt=0)
    #: Debezium's heartbeat.action.query: SQL run at each heartbeat (e.g. an UPDATE of a
    #: captured heartbeat table), so WAL flows through the slot even when nothing else writes.
    heartbeat_action_query: str | None = None
    #: Logical decoding messages (pg_logical_emit_message) whose prefix matches one of these
    #: regular expressions are published to ``<prefix>.message`` (empty: all).
    message_prefix_include: tuple[str, ...] = ()
    #: ... unless it matches one of these (Debezium's message.prefix.exclude.list).
    message_prefix_exclude: tuple[str, ...] = ()
    #: When to read the existing rows (op r): ``initial`` before streaming, when capture
    #: creates the slot; ``never``; ``initial_only`` (snapshot, then stop); ``when_needed``
    #: (also when the slot was lost or invalidated, instead of stopping); ``incremental``
    #: (when capture creates the slot, stream at once and read the tables as an incremental
    #: backfill alongside: no WAL piles up behind a long snapshot).
    snapshot_mode: Literal["initial", "never", "initial_only", "when_needed",
                           "incremental"] = "initial"
    #: ``initial_only``: keep the replication slot when the snapshot is done, so a later
    #: capture (``snapshot_mode: initial`` or ``never``) streams on from the snapshot point
    #: with no change lost in between. Off: the slot is dropped once the snapshot is
    #: confirmed in Kafka, as Debezium's ``initial_only`` leaves none, and holds no WAL.
    initial_only_keep_slot: bool = False
    #: Rows per snapshot chunk (keyset pagination on the primary key); also the default
    #: chunk of an incremental backfill (``cdc snapshot start --chunk-size``).
    snapshot_chunk_size: int = Field(default=2048, ge=1)
    #: Processes reading the initial snapshot side by side (Debezium's
    #: snapshot.max.threads): each imports the slot's exported snapshot and publishes with
    #: a producer of its own, taking key ranges of any table. 1: read in the capture process.
    snapshot_readers: int = Field(default=1, ge=1, le=64)
    #: How an initial snapshot interrupted part-way (a crash, a restart) finishes: its
    #: exported snapshot is gone. ``incremental``: stream at once from its consistent point
    #: and read the rest as an incremental backfill (no WAL piles up behind it);
    #: ``before_streaming``: read the rest first, outside any snapshot, then stream.
    snapshot_resume: Literal["incremental", "before_streaming"] = "incremental"
    #: Debezium's signal.data.collection: a table ``(id text, type text, data text)`` whose
    #: inserted rows are signals (``execute-snapshot`` ...), for applications that ask for a
    #: backfill from SQL. Added to the publication. None: signals come only as logical
    #: decoding messages (what ``cdc snapshot`` sends; no table needed).
    signal_table: str | None = None
    #: Debezium's provide.transaction.metadata: each event's ``transaction`` block, and
    #: BEGIN/END records with event counts on ``<prefix>.transaction``.
    transaction_metadata: bool = False
    #: Debezium's ``decimal.handling.mode`` for ``numeric`` and ``money``: ``string`` (exact
    #: text), ``double`` (a JSON number) or ``precise`` (base64 of the unscaled value's bytes).
    decimal_handling_mode: Literal["string", "double", "precise"] = "string"
    #: Per table (schema.table): columns left out, masked or hashed at capture.
    columns: dict[str, TableColumnSettings] = Field(default_factory=dict)
    #: Debezium's skipped.operations: changes of these kinds are not published
    #: (c create, u update, d delete, t truncate). Snapshot reads (r) always are.
    skipped_operations: tuple[Literal["c", "u", "d", "t"], ...] = ()

    _tables = field_validator("tables")(_check_table_ids)
    _column_tables = field_validator("columns")(_check_table_ids)

    @model_validator(mode="after")
    def _columns_of_listed_tables(self) -> PostgresSettings:
        unlisted = [t for t in self.columns if t not in self.tables]
        if unlisted:
            raise ValueError(f"columns names {', '.join(unlisted)}, which postgres.tables "
                             "does not list")
        return self

    _signal_table = field_validator("signal_table")(_check_table_id_or_none)

    @field_validator("message_prefix_include", "message_prefix_exclude")
    @classmethod
    def _patterns(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"'{pattern}' is not a regular expression: {exc}") from exc
        return patterns

    @field_validator("slot", "publication")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _NAME_RE.match(value) or len(value) > 63:
            raise ValueError(f"'{value}' must be lower-case letters, digits and _ (max 63)")
        return value


#: librdkafka security keys once accepted under ``kafka.producer`` -> their ``kafka.client``
#: setting. They secured only the capture producer and ``cdc dlq``; now every client needs them.
_MOVED_TO_CLIENT = {
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_username",
    "sasl.password": "sasl_password",
    "ssl.ca.location": "ssl_ca_location",
    "ssl.certificate.location": "ssl_certificate_location",
    "ssl.key.location": "ssl_key_location",
    "ssl.key.password": "ssl_key_password",
    "ssl.endpoint.identification.algorithm": "ssl_check_hostname",
}


class KafkaClientSettings(_Section):
    """How every Kafka client connects (capture, offsets, topic admin, both worker engines,
    the dedup changelog, dead letters, ``cdc dlq``, ``cdc status``): one set of security
    settings, turned into librdkafka and aiokafka (Faust) settings by ``pipeline.kafka.client``.
    """

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    #: CA certificate(s) (PEM) the brokers' certificates are checked against; None: the
    #: system's trust store.
    ssl_ca_location: Path | None = None
    #: Client certificate and key (PEM) when the brokers ask for one (mutual TLS).
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    #: Check that a broker's certificate names the host it was reached at.
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _complete(self) -> KafkaClientSettings:
        sasl = self.security_protocol.startswith("SASL_")
        ssl = self.security_protocol in ("SSL", "SASL_SSL")
        if sasl:
            for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name} is required with security_protocol "
                                     f"{self.security_protocol}")
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise ValueError(f"sasl_* settings need security_protocol SASL_PLAINTEXT or "
                             f"SASL_SSL (it is {self.security_protocol})")
        paths = {"ssl_ca_location": self.ssl_ca_location,
                 "ssl_certificate_location": self.ssl_certificate_location,
                 "ssl_key_location": self.ssl_key_location}
        for name, path in paths.items():
            if path is None:
                continue
            if not ssl:
                raise ValueError(f"{name} needs security_protocol SSL or SASL_SSL "
                                 f"(it is {self.security_protocol})")
            if not path.is_file():
                raise ValueError(f"{name} '{path}' does not exist")
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            raise ValueError("ssl_certificate_location and ssl_key_location go together")
        return self


class KafkaSettings(_Section):
    """The Kafka cluster holding raw CDC topics ``<topic_prefix>.<schema>.<table>``."""

    bootstrap_servers: str = "127.0.0.1:9092"
    #: Security (SASL, TLS) of every client of this cluster.
    client: KafkaClientSettings = KafkaClientSettings()
    topic_prefix: str = "cdc"
    #: Partitions of raw topics the pipeline creates; rows are spread by primary key.
    partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    #: Debezium's default: a delete is followed by a null-value record for log compaction.
    tombstones_on_delete: bool = True
    #: Compacted topic where capture keeps each source's last confirmed position (as Kafka
    #: Connect's offsets topic), so a lost replication slot is noticed, not silently re-made.
    offsets_topic: str = "cdc-capture-offsets"
    #: Extra librdkafka settings of the capture producer, e.g. {"linger.ms": 10}; security
    #: settings belong in ``client``. Values of keys naming a secret are kept as secrets.
    producer: dict[str, Any] = Field(default_factory=dict)
    #: How capture writes change-event values: json (Debezium's JsonConverter, schemas off)
    #: or avro (Confluent's wire format, schemas registered in ``schema_registry_url``).
    value_format: Literal["json", "avro"] = "json"
    #: A Confluent-API schema registry (Apicurio: ``http://host:port/apis/ccompat/v7``).
    #: Capture registers its schemas there (value_format avro); workers resolve every Avro
    #: schema id there instead of ``schemas/ids.yaml``.
    schema_registry_url: str | None = None
    #: Longest a capture producer may hold records Kafka acknowledges none of before it is
    #: replaced and capture reads again from its last confirmed position
    #: (:mod:`pipeline.capture.stall`).
    producer_stall_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _avro_needs_registry(self) -> KafkaSettings:
        if self.value_format == "avro" and not self.schema_registry_url:
            raise ValueError("kafka.value_format avro needs kafka.schema_registry_url (a "
                             "Confluent-API schema registry; `cdc stack up --with-registry` "
                             "starts one)")
        return self

    @field_validator("producer")
    @classmethod
    def _keeps_every_delivery_report(cls, producer: dict[str, Any]) -> dict[str, Any]:
        if "delivery.report.only.error" in producer:
            raise ValueError(
                "'delivery.report.only.error' is not supported: capture confirms a position "
                "only once Kafka acknowledged its events, which it learns from every "
                "record's delivery report; remove the setting")
        return producer

    @field_validator("producer")
    @classmethod
    def _hide_secrets(cls, producer: dict[str, Any]) -> dict[str, Any]:
        for key in producer:
            if key.startswith(("security.", "sasl.", "ssl.")):
                moved = _MOVED_TO_CLIENT.get(key)
                raise ValueError(
                    f"'{key}' moved to kafka.client.{moved}, which every Kafka client uses"
                    if moved else
                    f"'{key}' is not supported: security settings live in kafka.client "
                    f"(security_protocol, sasl_*, ssl_*), which every client, Faust's "
                    f"included, can use")
        return {
            k: SecretStr(str(v)) if _SECRET_KEY.search(k) and not isinstance(v, SecretStr) else v
            for k, v in producer.items()
        }

    def producer_config(self) -> dict[str, Any]:
        """The librdkafka settings with secrets revealed, for the client only."""
        return {
            k: v.get_secret_value() if isinstance(v, SecretStr) else v
            for k, v in self.producer.items()
        }

    def raw_topic(self, table_id: str) -> str:
        """``<topic_prefix>.<schema>.<table>``; a character Kafka refuses in a topic name
        (``$`` is valid in a table's name) becomes ``_``, as Debezium's topic names do."""
        return _TOPIC_UNSAFE.sub("_", f"{self.topic_prefix}.{table_id}")


class OrderingSection(_Section):
    """Watermark ordering per partition (``pipeline.ordering``). Lateness is source time:
    0 (the default) adds no delay and only sorts out events that arrive behind what was
    already released (replays, a second producer); raise it to reorder such arrivals,
    at the cost of that much latency."""

    enabled: bool = True
    allowed_lateness_ms: int = Field(default=0, ge=0)
    idle_flush_ms: int = Field(default=1_000, ge=0)
    max_buffered: int = Field(default=10_000, ge=1)
    late_policy: Literal["apply_if_newer", "dead_letter"] = "apply_if_newer"


class DedupSection(_Section):
    """Durable deduplication (``pipeline.dedup``), in a Faust table with a changelog topic."""

    enabled: bool = True
    window_ms: int = Field(default=24 * 3600 * 1000, ge=1)
    positions_per_row: int = Field(default=8, ge=1)
    evict_interval_s: float = Field(default=60.0, gt=0)


class EvolutionSettings(_Section):
    """Schema evolution (``pipeline.evolution``): Avro schemas per table version, upcasters."""

    schemas_dir: Path = Path("schemas")
    #: "package.module[:attribute]" exposing an Upcasters registry; None = additive only.
    upcasters: str | None = None


class WorkerSettings(_Section):
    """The Faust worker that reads raw topics and fans out to the sinks."""

    app_id: str = "cdc-worker"
    #: Raw topics to read; empty means one per table in ``postgres.tables``. Each ends in
    #: ``<schema>.<table>``: the table its records must be of.
    topics: tuple[str, ...] = ()
    dead_letter_topic: str = "cdc.dead-letter"
    #: Records per batch (a batch waits at most ``batch_wait_ms`` to fill). 2,000, as Kafka
    #: Connect's Elasticsearch sink: the search sink's bulk requests of a backlog are then
    #: large enough to keep Elasticsearch busy (+26 % faust, +59 % kafka engine against 500,
    #: bench/RESULTS.md); a quiet stream's batches are whatever came within the wait.
    batch_size: int = Field(default=2_000, ge=1, le=50_000)
    batch_wait_ms: int = Field(default=20, ge=0)
    retry_initial_ms: int = Field(default=100, ge=1)
    retry_max_ms: int = Field(default=5_000, ge=1)
    #: The longest a worker may go without polling before its consumer group takes its
    #: partitions away (Kafka's max.poll.interval.ms; the session timeout follows it down
    #: to the broker's 6 s minimum). A sink outage does not count: the worker pauses its
    #: partitions and keeps polling.
    max_poll_interval_ms: int = Field(default=300_000, ge=6_000)
    web_port: int | None = None
    #: Where the dedup seen-set lives (``pipeline.seenstore``), on both engines: rocksdb://
    #: (the default: RocksDB on local disk under CDC_WORKER_DATADIR, memory bounded) or
    #: memory:// (a dict, grows with the rows changed within the dedup window). Left at its
    #: default without the rocksdict package, it falls back to memory:// with a warning.
    #: Both are filled from the changelog topic at start.
    store: Literal["memory://", "rocksdb://"] = "rocksdb://"
    #: faust: a Faust app per sink (the default). kafka: the same processing in a
    #: confluent-kafka consume loop (the engines' speeds: bench/RESULTS.md).
    engine: Literal["faust", "kafka"] = "faust"
    #: Faust's ~100-line start-up banner and spinner per sink (engine faust); off by
    #: default, its log lines stay.
    faust_banner: bool = False
    ordering: OrderingSection = OrderingSection()
    dedup: DedupSection = DedupSection()

    @field_validator("topics")
    @classmethod
    def _topics_name_tables(cls, topics: tuple[str, ...]) -> tuple[str, ...]:
        for topic in topics:
            if not re.fullmatch(r"(.+\.)?[^.]+\.[^.]+", topic):
                raise ValueError(f"'{topic}' does not end in <schema>.<table>, the table its "
                                 f"records must be of")
        return topics

    @property
    def store_chosen(self) -> bool:
        """Whether ``store`` was set (file or environment) rather than left at its default."""
        return "store" in self.model_fields_set


class ElasticsearchSettings(_Section):
    """The search-index sink: one index per table unless ``indices`` maps it elsewhere."""

    #: Credentials written into it (``http://user:password@host``) move to username/password.
    url: str = "http://127.0.0.1:9200"
    username: str | None = None
    password: SecretStr | None = None
    #: table (schema.table) -> index name; default ``<index_prefix><schema>.<table>``.
    indices: dict[str, str] = Field(default_factory=dict)
    index_prefix: str = "cdc."
    timeout_s: float = Field(default=10.0, gt=0)

    _indices = field_validator("indices")(_check_table_ids)

    @field_validator("indices")
    @classmethod
    def _index_names(cls, indices: dict[str, str]) -> dict[str, str]:
        for name in indices.values():
            _check_index_name(name)
        return indices

    @field_validator("index_prefix")
    @classmethod
    def _index_prefix(cls, prefix: str) -> str:
        _check_index_name(prefix.lower() + "x")
        return prefix

    @model_validator(mode="before")
    @classmethod
    def _url_credentials(cls, data: Any) -> Any:
        return credentials_out_of_url(data, "elasticsearch")

    def index_for(self, table_id: str) -> str:
        return self.indices.get(table_id) or f"{self.index_prefix}{table_id}".lower()


class RedisSettings(_Section):
    """The cache-invalidation sink: key templates per table, e.g. ``product:{id}``."""

    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    keys: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    #: When set, each batch's invalidated keys are also published on this pub/sub channel.
    channel: str | None = None

    _keys = field_validator("keys")(_check_table_ids)

    @field_validator("keys")
    @classmethod
    def _templates(cls, keys: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for table, templates in keys.items():
            for template in templates:
                if "{" not in template:
                    raise ValueError(f"template '{template}' for {table} names no column")
        return keys


class MetricsSettings(_Section):
    """Prometheus text on ``port`` (off when None) and a JSON snapshot file per process."""

    port: int | None = None
    snapshot_dir: Path | None = None
    interval_s: float = Field(default=1.0, gt=0)


class PolledTableSettings(_Section):
    """One table's columns, where they differ from the ``polling`` defaults."""

    timestamp_column: str | None = None
    created_column: str | None = None
    soft_delete_column: str | None = None


class PollingSettings(_Section):
    """Query-based polling (``capture.source: polling``): each table in ``postgres.tables``
    is read by its ``(timestamp column, primary key)`` watermark every ``interval_s``."""

    #: The column every write sets to the time of the change (e.g. ``DEFAULT now()`` and a
    #: trigger or the application on update); ``timestamptz`` or ``timestamp``.
    timestamp_column: str = "updated_at"
    #: A column set once, when the row is created, to the same value as the timestamp
    #: column: a row whose two are equal is published as ``op: c``, else ``u``. None: every
    #: change is ``op: u`` (polling cannot tell an insert otherwise).
    created_column: str | None = None
    #: A column that marks a row deleted (a ``boolean`` true, any other type not NULL): such
    #: a row is published as ``op: d`` (and a tombstone, like a delete). None: off.
    soft_delete_column: str | None = None
    #: Per-table overrides of the three columns above, by ``schema.table``.
    tables: dict[str, PolledTableSettings] = Field(default_factory=dict)
    #: Seconds between polls (of every table; a table with more rows than ``batch_size``
    #: waiting is read batch after batch at once).
    interval_s: float = Field(default=1.0, gt=0)
    #: Rows are read only once their timestamp is this much older than the server's
    #: ``now()``: time for the transactions that wrote them to commit (see README).
    safety_lag_s: float = Field(default=5.0, ge=0)
    #: Rows per query.
    batch_size: int = Field(default=1000, ge=1)
    #: ``lag``: read up to ``now() - safety_lag_s``. ``horizon``: also never past the start
    #: of the oldest transaction still open in the database (needs pg_read_all_stats).
    mode: Literal["lag", "horizon"] = "lag"
    #: The time zone ``timestamp`` (without time zone) columns are written in.
    time_zone: str = "UTC"

    _tables = field_validator("tables")(_check_table_ids)

    def columns(self, table: str) -> tuple[str, str | None, str | None]:
        """``(timestamp, created, soft delete)`` columns of ``table``."""
        own = self.tables.get(table) or PolledTableSettings()
        return (own.timestamp_column or self.timestamp_column,
                own.created_column or self.created_column,
                own.soft_delete_column or self.soft_delete_column)


#: What Kafka allows in a topic name.
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: Placeholders an outbox topic template may use: the routing columns of an event.
OUTBOX_TOPIC_FIELDS = ("aggregatetype", "type")
_OUTBOX_PLACEMENTS = ("header", "envelope")


class OutboxSettings(_Section):
    """The transactional outbox (Debezium's outbox event router semantics), both ways:
    the relay (``capture.source: outbox``) reads ``table``; the logical source (``capture.source:
    logical``) routes the inserts into ``table`` and the logical decoding messages with
    ``message_prefix`` when this section is present."""

    #: The outbox table (``cdc outbox install`` creates it). With the logical source it is
    #: added to the publication by itself (do not list it in postgres.tables); None: route
    #: logical decoding messages only.
    table: str | None = "public.outbox"
    #: Logical decoding messages (``pipeline.outbox.emit``) with exactly this prefix are
    #: routed as outbox events instead of being published to ``<prefix>.message``. None: off.
    message_prefix: str | None = "outbox"
    #: The topic of an event; ``{aggregatetype}`` (or Debezium's ``${routedByValue}``) and
    #: ``{type}`` are replaced by the event's columns.
    topic_template: str = "outbox.event.{aggregatetype}"
    #: Debezium's ``table.fields.additional.placement``: ``column:header[:name]`` or
    #: ``column:envelope[:name]`` (the value becomes ``{"payload": ..., name: ...}``).
    additional_placement: tuple[str, ...] = ("type:header:type",)
    #: Relay: events claimed (and published) per batch.
    batch_size: int = Field(default=500, ge=1, le=100_000)
    #: Relay: seconds between looks at the table when it had nothing to publish.
    poll_interval_s: float = Field(default=0.2, gt=0)
    #: Relay: publish attempts Kafka refuses before an event becomes FAILED.
    max_attempts: int = Field(default=5, ge=1)
    #: Relay: the wait before the n-th retry of a refused event is this times 2**(n-1)
    #: (at most 5 minutes).
    retry_delay_s: float = Field(default=1.0, ge=0)
    #: Relay: a FAILED event holds back its aggregate's later events (keeps their order)
    #: until it is retried (``cdc outbox retry``). False: later events go on without it.
    failed_holds_aggregate: bool = True
    #: Relay: delete a published event instead of marking it SENT.
    delete_after_publish: bool = False
    #: Larger events (key, value and headers) are refused as bad input (FAILED, or the
    #: dead-letter topic) before Kafka sees them; at most the producer's message.max.bytes.
    max_message_bytes: int = Field(default=15 * 1024 * 1024, ge=1024, le=16 * 1024 * 1024)

    @field_validator("table")
    @classmethod
    def _table(cls, table: str | None) -> str | None:
        if table is not None:
            _check_table_ids([table])
        return table

    @field_validator("topic_template")
    @classmethod
    def _template(cls, template: str) -> str:
        try:
            sample = outbox_topic(template, {f: "x" for f in OUTBOX_TOPIC_FIELDS})
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(f"'{template}' may only use the placeholders "
                             f"{', '.join('{' + f + '}' for f in OUTBOX_TOPIC_FIELDS)}: "
                             f"{exc!r}") from exc
        if not _TOPIC_RE.match(sample):
            raise ValueError(f"'{template}' does not make a Kafka topic name (letters, digits "
                             f"and . _ -)")
        return template

    @field_validator("additional_placement")
    @classmethod
    def _placement(cls, entries: tuple[str, ...]) -> tuple[str, ...]:
        for entry in entries:
            parts = entry.split(":")
            if len(parts) not in (2, 3) or not parts[0] or parts[1] not in _OUTBOX_PLACEMENTS:
                raise ValueError(f"'{entry}' is not column:header[:name] or "
                                 f"column:envelope[:name]")
        return entries


def outbox_topic(template: str, fields: Mapping[str, str]) -> str:
    """The topic ``template`` names for an event's routing ``fields``."""
    return template.replace("${routedByValue}", "{aggregatetype}").format_map(fields)


def is_topic_name(name: str) -> bool:
    """Whether Kafka accepts ``name`` as a topic name."""
    return bool(_TOPIC_RE.match(name)) and name not in (".", "..")


class CaptureSettings(_Section):
    """Which capture strategy ``cdc capture`` runs (each is a source on the one capture loop)."""

    #: ``logical``: PostgreSQL logical replication (pgoutput), the default and the most
    #: complete. Each further strategy adds its name here and a section of its own.
    #: ``triggers``: a change-log table filled by triggers (``cdc triggers install``),
    #: relayed by ``cdc capture``; settings under ``triggers``.
    #: ``polling``: query-based polling of an ``updated_at``-style column; settings under
    #: ``polling``.
    #: ``outbox``: the outbox relay (section ``outbox``), for databases without logical
    #: replication: publishes the application's events from the outbox table.
    #: ``mysql``: the binlog of MySQL or MariaDB (``pipeline.sources.mysql``); settings
    #: under ``mysql``.
    source: Literal["logical", "triggers", "polling", "outbox", "mysql"] = "logical"
    #: Capture logs "N records sent during previous 00:01:00, last confirmed position ..."
    #: this often (seconds; null: never), like Debezium.
    throughput_log_interval_s: float | None = Field(default=60.0, gt=0)


class TriggerSettings(_Section):
    """Trigger-based capture (``pipeline.sources.triggers``): where the change log lives
    and how the relay reads it."""

    #: Schema of the change-log table and the trigger function (created if missing).
    log_schema: str = "cdc"
    #: The change-log table (the relay's durable queue).
    log_table: str = "change_log"
    #: Log rows read per query.
    batch_size: int = Field(default=1000, ge=1)
    #: Seconds between looks at the log when it had nothing to relay.
    poll_interval_s: float = Field(default=0.2, gt=0)

    @field_validator("log_schema", "log_table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        # Room for the trigger names derived from both (``<schema>__<table>__truncate``).
        if not _NAME_RE.match(value) or len(value) > 25:
            raise ValueError(f"'{value}' must be lower-case letters, digits and _ (max 25)")
        return value


class MysqlSettings(_Section):
    """The MySQL/MariaDB binlog source (``pipeline.sources.mysql``), read as a replica."""

    host: str = "127.0.0.1"
    port: int = Field(default=3306, ge=1, le=65535)
    #: Needs REPLICATION SLAVE, REPLICATION CLIENT (BINLOG MONITOR) and SELECT.
    user: str = "cdc"
    password: SecretStr = SecretStr("")
    #: ``mariadb`` or ``mysql``: the server's kind, and ``source.connector`` in the envelope.
    flavor: Literal["mariadb", "mysql"] = "mariadb"
    #: The replica id this capture registers with (unique among the server's replicas).
    server_id: int = Field(default=184054, ge=1, le=2**32 - 1)
    #: Tables to capture as ``database.table``; topics ``<topic_prefix>.<database>.<table>``.
    tables: tuple[str, ...] = ()
    #: How a restart finds its place: ``position`` (binlog file and position: this server
    #: only) or ``gtid`` (MariaDB's GTID position: also a replica promoted in its place).
    resume_by: Literal["position", "gtid"] = "position"
    #: The source's name in its saved position and in ``source.name`` (Debezium's
    #: topic.prefix); None: ``<host>:<port>``.
    server_name: str | None = None
    #: When to read the existing rows (op r), in one consistent-snapshot transaction at a
    #: known binlog position, before streaming from it: ``initial`` when capture has no
    #: saved position; ``never`` (start at the end of the binlog); ``initial_only``
    #: (snapshot, then stop); ``when_needed`` (also when the saved position was purged
    #: from the server, instead of stopping).
    snapshot_mode: Literal["initial", "never", "initial_only", "when_needed"] = "initial"
    #: Rows per snapshot chunk (keyset pagination on the primary key); also the default
    #: chunk of an incremental backfill.
    snapshot_chunk_size: int = Field(default=2048, ge=1)
    #: Debezium's signal.data.collection: a table ``(id VARCHAR(42) PRIMARY KEY, type
    #: VARCHAR(32), data VARCHAR(2048))`` you create, on which the capture user has INSERT.
    #: Rows inserted into it are signals (``execute-snapshot`` ...: incremental backfills
    #: while streaming), and capture writes each backfill chunk's low/high watermarks into
    #: it, so they reach the binlog in order with the changes. None: no backfills.
    signal_table: str | None = None
    #: The compacted topic of the schema history (the captured tables' columns after each
    #: DDL statement, for servers whose binlog_row_metadata is not FULL); None:
    #: ``<kafka.offsets_topic>.schema-history``.
    schema_history_topic: str | None = None
    #: Records of a prepared XA transaction held in memory until its XA COMMIT (published
    #: then) or XA ROLLBACK (dropped). A larger one is published as it is read, at XA
    #: PREPARE, as Debezium publishes every one, with a warning; 0: publish each at PREPARE.
    xa_held_records: int = Field(default=100_000, ge=0)

    _tables = field_validator("tables")(_check_table_ids)

    _signal_table = field_validator("signal_table")(_check_table_id_or_none)

    @model_validator(mode="after")
    def _signal_table_not_captured(self) -> MysqlSettings:
        if self.signal_table is not None and self.signal_table in self.tables:
            raise ValueError(f"signal_table {self.signal_table} is also in mysql.tables: its "
                             "rows are signals and watermarks, never published; remove it "
                             "from tables")
        return self

    @property
    def name(self) -> str:
        return self.server_name or f"{self.host}:{self.port}"


class ErrorSettings(_Section):
    """How long outages are retried (Kafka Connect's ``errors.retry.timeout``)."""

    #: Seconds an outage (PostgreSQL or Kafka unreachable for capture, a sink unavailable
    #: for a worker) is retried before the process exits non-zero (3) with the last error.
    #: None (the default): retried for ever. Refused credentials never are.
    retry_timeout_s: float | None = Field(default=None, gt=0)


class Settings(_Section):
    """Everything the pipeline reads, composed from the sections above."""

    postgres: PostgresSettings
    kafka: KafkaSettings = KafkaSettings()
    capture: CaptureSettings = CaptureSettings()
    triggers: TriggerSettings = TriggerSettings()
    polling: PollingSettings = PollingSettings()
    mysql: MysqlSettings = MysqlSettings()
    worker: WorkerSettings = WorkerSettings()
    elasticsearch: ElasticsearchSettings | None = None
    redis: RedisSettings | None = None
    evolution: EvolutionSettings | None = None
    #: The transactional outbox: the relay's table, and routing by the logical source.
    outbox: OutboxSettings | None = None
    #: Further sinks by name: {type: webhook | 'module:Class', ...its settings}.
    sinks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    metrics: MetricsSettings = MetricsSettings()
    errors: ErrorSettings = ErrorSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ``text`` or ``json`` (one JSON object per line: time, level, logger, message);
    #: ``CDC_LOG_FORMAT`` overrides it.
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="after")
    def _polled_tables_are_listed(self) -> Settings:
        unlisted = [t for t in self.polling.tables if t not in self.postgres.tables]
        if unlisted:
            raise ValueError(f"polling.tables names {', '.join(unlisted)}, which "
                             "postgres.tables does not list (polling reads postgres.tables)")
        return self

    @model_validator(mode="after")
    def _column_rules_need_logical(self) -> Settings:
        pg = self.postgres
        if self.capture.source != "logical" and (pg.columns or pg.skipped_operations):
            raise ValueError(f"postgres.columns and postgres.skipped_operations are applied "
                             f"by the logical source only, not by capture.source "
                             f"{self.capture.source}: remove them (or capture with logical)")
        return self

    @model_validator(mode="after")
    def _outbox_fits_source(self) -> Settings:
        o = self.outbox
        if o is None:
            return self
        if self.capture.source == "outbox" and o.table is None:
            raise ValueError("outbox.table is None, but the relay (capture.source outbox) "
                             "reads the outbox table")
        if self.capture.source == "logical" and o.table in self.postgres.tables:
            raise ValueError(f"outbox.table {o.table} is also in postgres.tables: the logical "
                             f"source routes it as outbox events by itself (and adds it to "
                             f"the publication); remove it from postgres.tables")
        return self

    def group_id(self, sink: str) -> str:
        """Each sink consumes with its own consumer group, so a slow one stalls no other."""
        return f"{self.worker.app_id}-{sink}"

    @model_validator(mode="before")
    @classmethod
    def _mysql_needs_no_postgres(cls, data: Any) -> Any:
        """Capturing MySQL reads no PostgreSQL: ``postgres.tables`` need not be written
        then, it defaults to the captured tables (``captured_tables``)."""
        if not isinstance(data, dict):
            return data
        capture, mysql = data.get("capture"), data.get("mysql")
        if (isinstance(capture, dict) and capture.get("source") == "mysql"
                and isinstance(mysql, dict) and mysql.get("tables")):
            postgres = data.get("postgres")
            if postgres is None or (isinstance(postgres, dict) and "tables" not in postgres):
                data = {**data, "postgres": {**(postgres or {}), "tables": mysql["tables"]}}
        return data

    @model_validator(mode="after")
    def _mysql_tables(self) -> Settings:
        if self.capture.source == "mysql" and not self.mysql.tables:
            raise ValueError("mysql.tables is required with capture.source mysql "
                             "(database.table names)")
        return self

    @model_validator(mode="after")
    def _one_topic_per_table(self) -> Settings:
        """Two tables whose names differ only in characters Kafka refuses in a topic name
        would share a topic (``raw_topic``): refused, naming both."""
        seen: dict[str, str] = {}
        for table in self.captured_tables():
            topic = self.kafka.raw_topic(table)
            if len(topic) > 249:
                raise ValueError(f"the topic of {table} ({topic}) is longer than Kafka's "
                                 "249 characters: shorten kafka.topic_prefix")
            if topic in seen:
                raise ValueError(f"{seen[topic]} and {table} would share the topic {topic} "
                                 "(characters Kafka refuses in a topic name become '_'): "
                                 "capture them with different kafka.topic_prefix settings")
            seen[topic] = table
        return self

    @model_validator(mode="after")
    def _one_index_per_table(self) -> Settings:
        """Index names are lower case: two tables whose names differ only in case (or an
        ``elasticsearch.indices`` entry naming another table's index) would write their rows
        into one index, each overwriting the other's documents of the same key."""
        if self.elasticsearch is None:
            return self
        seen: dict[str, str] = {}
        for table in self.captured_tables():
            index = self.elasticsearch.index_for(table)
            if index in seen:
                raise ValueError(
                    f"{seen[index]} and {table} would share the search index {index} (index "
                    "names are lower case): give one its own with elasticsearch.indices "
                    f"{{{table}: <name>}}")
            seen[index] = table
        for index, table in seen.items():  # the sink writes <index> through <index>_v<N>
            versioned = re.fullmatch(r"(.+)_v\d+", index)
            if versioned is not None and versioned[1] in seen:
                raise ValueError(
                    f"the search index of {table} ({index}) is a name the index of "
                    f"{seen[versioned[1]]} takes for its versions ({versioned[1]}_v1, _v2, "
                    f"...): give one its own with elasticsearch.indices {{{table}: <name>}}")
        return self

    def captured_tables(self) -> tuple[str, ...]:
        """The tables capture publishes (``database.table`` for MySQL, else
        ``schema.table``)."""
        return self.mysql.tables if self.capture.source == "mysql" else self.postgres.tables

    def raw_topics(self) -> tuple[str, ...]:
        if self.worker.topics:
            return self.worker.topics
        return tuple(self.kafka.raw_topic(t) for t in self.captured_tables())

    def topic_tables(self) -> dict[str, str]:
        """Raw topic -> the table (``schema.table``) its records must be of. A record's own
        ``source.schema``/``table`` never decides where it is written: it must agree with
        its topic's. A topic not of a listed table (``worker.topics``, e.g. Debezium's
        ``<prefix>.<schema>.<table>``) carries the table its last two parts name."""
        listed = {self.kafka.raw_topic(t): t for t in self.captured_tables()}
        return {topic: listed.get(topic) or ".".join(topic.split(".")[-2:])
                for topic in self.raw_topics()}

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data, secrets shown as '**********'.

        A ``sinks`` entry is shown as its sink's settings model reads it (its secrets are
        secret types), and on top of that every value under a secret-looking key is hidden
        and every URL loses its userinfo, for sinks whose models are less careful.
        """
        data = self.model_dump(mode="json")
        data["sinks"] = {name: _hide_entry_secrets(self._sink_entry(name))
                         for name in self.sinks}
        return data

    def _sink_entry(self, name: str) -> dict[str, Any]:
        from pipeline.sinks.registry import resolve

        entry = dict(self.sinks[name])
        type_name = entry.pop("type", None)
        try:
            model = resolve(name, type_name).Settings.model_validate(entry)
        except Exception:  # noqa: BLE001 - unusable entry: still shown, by key only
            return {"type": type_name, **entry}
        return {"type": type_name, **model.model_dump(mode="json")}


ENV_PREFIX = "CDC_"


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = yaml.safe_load(raw) if raw else raw
    return data


def _describe(error: ValidationError) -> ConfigError:
    """Every problem, the first one's setting named as the error's; a misspelled setting gets
    a did-you-mean from the settings at its place."""
    problems = [_problem(e) for e in error.errors()]
    setting, problem = problems[0]
    if len(problems) > 1:
        problem += "".join(f"\n  and '{s}': {p}" for s, p in problems[1:])
    return ConfigError(setting, problem)


def _problem(error: Any) -> tuple[str, str]:
    loc = [str(p) for p in error["loc"]]
    setting = ".".join(loc) or "<root>"
    problem = error["msg"]
    if error["type"] == "extra_forbidden":
        problem = "unknown setting"
        guess = difflib.get_close_matches(loc[-1], _fields_at(loc[:-1]), n=1, cutoff=0.6)
        if guess:
            problem += f" (did you mean '{'.'.join([*loc[:-1], guess[0]])}'?)"
        else:
            problem += " (check the spelling against the configuration reference)"
    elif error["type"] == "missing":
        problem = "is required but not set"
    elif error["type"] in ("tuple_type", "list_type") and isinstance(error.get("input"), str):
        shown = error["input"]
        items = ", ".join(p.strip() for p in shown.split(",") if p.strip())
        problem += (f" (got the text {shown!r}: write a list, e.g. [{items}] in YAML or in "
                    f"CDC_{'__'.join(p.upper() for p in loc)}='[{items}]')")
    return setting, problem


def _fields_at(path: list[str]) -> list[str]:
    """The setting names of the section at ``path`` (empty if it is not a section)."""
    model: Any = Settings
    for part in path:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        candidates = [field.annotation, *getattr(field.annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type)
                      and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the YAML file (if any), apply ``CDC_*`` environment overrides, validate.

    Raises ConfigError naming the first bad setting.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is None and environ.get("CDC_CONFIG"):
        path = environ["CDC_CONFIG"]
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError("config file", f"'{file}' does not exist")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("config file", f"'{file}' is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError("config file", f"'{file}' must hold a mapping at the top level")
        data = loaded
    data = _apply_env(data, environ)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise _describe(exc) from exc
