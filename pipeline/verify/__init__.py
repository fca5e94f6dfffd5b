"""``cdc verify``: does each search index still equal its table? And ``--repair``."""
