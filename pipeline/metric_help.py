"""The ``# HELP`` line of every metric the pipeline emits (``/metrics`` and the dashboard).

A name missing here still works (its help says so); ``tests/unit/test_metrics_exposition.py``
checks that every name the code emits has a line.
"""

from __future__ import annotations

HELP: dict[str, str] = {
    # capture
    "cdc_capture_events_total": "Row changes published to Kafka, by table and op (c/u/d/r/t).",
    "cdc_capture_skipped_events_total": "Row changes not published (filtered), by table and op.",
    "cdc_capture_transactions_total": "Source transactions published.",
    "cdc_capture_heartbeats_total": "Heartbeats written to keep the slot moving on idle tables.",
    "cdc_capture_errors_total": "Errors the capture loop recovered from by reconnecting.",
    "cdc_capture_confirmed_lsn": "The newest LSN confirmed to PostgreSQL.",
    "cdc_capture_slot_lag_bytes": "WAL bytes from the slot's confirmed LSN to the current one.",
    "cdc_capture_slot_retained_wal_bytes": "WAL bytes PostgreSQL keeps on disk for the slot.",
    "cdc_capture_logical_messages_total": "pg_logical_emit_message messages, by outcome.",
    "cdc_capture_signals_total": "Signals read from the signal table, by type and outcome.",
    "cdc_capture_unconverted_values_total": "Values of a type the capture cannot convert, by type.",
    "cdc_capture_backfill_rows_total": "Rows published by snapshots and backfills, by table.",
    "cdc_capture_backfill_chunks_total": "Backfill chunks completed, by table.",
    "cdc_capture_backfill_progress_ratio": "Share of a table's backfill done (0 to 1), by table.",
    "cdc_capture_backfill_toast_filled_total": "Unchanged TOAST values filled in by a backfill.",
    "cdc_capture_backfill_failures_total": "Backfills that failed, by table.",
    "cdc_capture_trigger_rows_relayed_total": "Change-log rows relayed by the trigger source.",
    "cdc_capture_trigger_rows_waiting": "Change-log rows waiting to be relayed.",
    "cdc_capture_trigger_horizon_lag_seconds": "Age of the oldest change-log row waiting.",
    "cdc_replication_lag_seconds": "Age of the newest change published (commit time to now).",
    "cdc_commit_to_kafka_latency": "Seconds from the source commit to Kafka's acknowledgement.",
    "cdc_polling_bound_lag_seconds": "How far the polling source's upper bound is behind now.",
    "cdc_polling_prepared_transactions": "Prepared transactions holding the polling bound back.",
    "cdc_polling_rows_never_seen": "Rows polling cannot see (NULL timestamp), by table.",
    "cdc_polling_rows_in_future": "Rows whose timestamp column is in the future, by table.",
    "cdc_outbox_events_total": "Outbox events, by outcome (routed, dead_lettered, ...).",
    # workers and sinks
    "cdc_worker_records_total": "Kafka records a worker processed.",
    "cdc_worker_batches_total": "Batches a worker wrote.",
    "cdc_worker_batch_processing": "Seconds a worker spends on one batch, from taking it to "
                                   "committing it (not the wait for it).",
    "cdc_worker_consumer_lag_records": "Records from the consumer's position to the log end.",
    "cdc_worker_unacked_records": "Records read but not yet written and committed.",
    "cdc_worker_paused_partitions": "Partitions a worker paused while its sink is down "
                                    "(it keeps polling, so it stays in its group).",
    "cdc_worker_rebalances_total": "Consumer group rebalances a worker went through.",
    "cdc_worker_errors_total": "Write attempts that failed and are retried, by error kind.",
    "cdc_worker_skipped_total": "Records skipped on purpose, by kind.",
    "cdc_worker_tombstones_total": "Kafka tombstones read (compaction markers, nothing to write).",
    "cdc_worker_late_total": "Events released after their reordering window.",
    "cdc_worker_rereads_total": "Records the Faust consumer skipped and had to read again.",
    "cdc_worker_held_total": "Records held behind a hole in the offsets until it was settled.",
    "cdc_worker_log_gaps_total": "Holes in the offsets that were the log's own (compaction).",
    "cdc_worker_acks_blocked_total": "Acknowledgements Faust tried for unfinished records.",
    "cdc_dedup_evicted_total": "Entries evicted from the dedup seen-set (past the window).",
    "cdc_dedup_dropped_total": "Duplicate events dropped by the deduplicator.",
    "cdc_dedup_stale_total": "Events older than the version already written, dropped.",
    "cdc_dead_letters_total": "Events sent to the dead-letter topic, by stage (the reason).",
    "cdc_sink_events_total": "Events written to a sink, by sink.",
    "cdc_sink_rejected_total": "Events a sink refused (dead-lettered), by sink.",
    "cdc_sink_retries_total": "Sink writes retried, by sink.",
    "cdc_sink_batch_latency": "Seconds one batch write to a sink takes, by sink.",
    "cdc_commit_to_sink_latency": "Seconds from source commit to sink write (freshness).",
}
