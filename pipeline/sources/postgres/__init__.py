"""PostgreSQL source internals: the ``pgoutput`` decoder, value conversion and LSNs."""

from pipeline.native import drop_stale

drop_stale()  # compiled modules built from older sources must not shadow the sources
