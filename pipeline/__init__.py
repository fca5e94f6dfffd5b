"""cdc-pipeline: change data capture from PostgreSQL to Kafka, fanned out to sinks by Faust."""

__version__ = "0.1.0"
