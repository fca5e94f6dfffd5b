"""PostgreSQL source internals: the ``pgoutput`` decoder, value conversion and LSNs."""

from pipeline.native import use_sources_if_stale

use_sources_if_stale()  # a compiled build older than its sources must not shadow them
