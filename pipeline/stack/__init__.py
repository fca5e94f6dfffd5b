"""A local stack of real servers on 127.0.0.1 for development, tests and benchmarks:
PostgreSQL 15 (logical decoding), Kafka 3.9.1 (KRaft), Redis 7, Elasticsearch 9, MariaDB 10.11
(row binlog); optionally a schema registry (Apicurio Registry, Confluent's API).

Installed idempotently (apt, Maven Central; cached in ``$CDC_CACHE_DIR`` or
``~/.cache/cdc-pipeline``), started on free ports with state in ``$CDC_STACK_DIR``
(default ``<repo>/.stack``, ``stack.json`` records ports, pids, connection settings).
Servers outlive the Python process that started them.

    info = up()                      # idempotent; reuses running servers
    os.environ.update(env_vars(info))
    stop_service("elasticsearch"); start_service("elasticsearch")   # same port/data
    down()
"""

from pipeline.stack.errors import StackError
from pipeline.stack.runner import (
    ALL,
    DEFAULT,
    ServiceStatus,
    StackInfo,
    down,
    env_vars,
    load,
    start_service,
    state_dir,
    status,
    stop_service,
    up,
)

__all__ = [
    "ALL",
    "DEFAULT",
    "ServiceStatus",
    "StackError",
    "StackInfo",
    "down",
    "env_vars",
    "load",
    "start_service",
    "state_dir",
    "status",
    "stop_service",
    "up",
]
