"""PostgreSQL source internals: the ``pgoutput`` decoder, value conversion and LSNs."""
