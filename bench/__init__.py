"""Reproducible benchmarks: capture, the Debezium peer, the replication ceiling, the worker,
end-to-end latency and memory. Run ``python -m bench --help`` (or ``make bench``)."""
