"""Example upcasters for the demo schemas in ``schemas/public.customers/``.

Use them with ``evolution.upcasters: pipeline.evolution.examples`` (the module exposes
``upcasters``). They show both kinds of step:

* v1 -> v2 splits ``name`` into ``first_name`` and ``last_name``: not expressible in Avro,
  so it is code (``split_name``).
* v2 -> v3 adds ``currency`` with the default ``"USD"``: additive with a default, so it needs
  no code; Avro resolution (or, for JSON, the evolver) fills the default.
"""

from __future__ import annotations

from pipeline.events import UNAVAILABLE_VALUE, Row
from pipeline.evolution.upcast import Upcasters

upcasters = Upcasters()


@upcasters.register("public.customers", 1)
def split_name(row: Row) -> Row:
    """v1 -> v2: ``name`` up to its first space becomes ``first_name``, the rest (maybe
    empty) ``last_name``. An unavailable (unchanged TOAST) name leaves both unavailable."""
    name = row.pop("name", None)
    if name == UNAVAILABLE_VALUE:
        row["first_name"] = row["last_name"] = UNAVAILABLE_VALUE
        return row
    first, _, last = (name or "").strip().partition(" ")
    row["first_name"] = first
    row["last_name"] = last.strip()
    return row
