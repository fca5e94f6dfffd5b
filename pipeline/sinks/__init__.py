"""Sinks: where change events go. Each implements ``Sink`` (see ``base``)."""
