"""Change sources: one package per way of capturing changes."""
