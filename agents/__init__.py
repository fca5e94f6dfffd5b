"""Faust agents: thin wiring of ``pipeline`` processing onto Kafka topics."""
