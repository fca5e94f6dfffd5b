"""Kafka: publishing raw change events and creating raw topics."""
