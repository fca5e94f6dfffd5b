"""The evolver's precomputed plans give exactly what the step-by-step chain gives.

An additive chain is collapsed into one copy per image shape (``Evolver._plan``); this holds
it equal to the general path (``Evolver._chain``) over random partial images, for a chain
that adds fields (with immutable and mutable defaults), drops a field, and brings a dropped
field back with a default (which must win over the image's old value)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.evolution import Evolver, SchemaSet

TABLE = "shop.items"
ROOT = Path(__file__).resolve().parents[2]

VERSIONS = {
    1: [{"name": "id", "type": "long"}, {"name": "name", "type": ["null", "string"]},
        {"name": "legacy", "type": ["null", "string"], "default": None}],
    2: [{"name": "id", "type": "long"}, {"name": "name", "type": ["null", "string"]},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": ["new"]}],
    3: [{"name": "id", "type": "long"}, {"name": "name", "type": ["null", "string"]},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": ["new"]},
        {"name": "legacy", "type": ["null", "string"], "default": "gone"},
        {"name": "currency", "type": "string", "default": "USD"}],
}


def _schema_set(root: Path) -> SchemaSet:
    folder = root / TABLE
    folder.mkdir(parents=True, exist_ok=True)
    for n, fields in VERSIONS.items():
        (folder / f"v{n}.avsc").write_text(json.dumps(
            {"type": "record", "name": "Value", "namespace": TABLE, "fields": fields}))
    (root / "ids.yaml").write_text(f"{TABLE}:\n  1: 9101\n  2: 9102\n  3: 9103\n")
    (root / "envelope.avsc").write_text((ROOT / "schemas" / "envelope.avsc").read_text())
    return SchemaSet.load(root)


def _images() -> st.SearchStrategy[dict[str, object]]:
    names = ["id", "name", "legacy", "tags", "currency"]
    values = st.one_of(st.none(), st.integers(), st.text(max_size=5),
                       st.lists(st.text(max_size=3), max_size=2))
    return st.lists(st.sampled_from(names), unique=True).flatmap(
        lambda cols: st.fixed_dictionaries({c: values for c in ["id", *cols] if c}))


def test_plans() -> None:
    evolver = Evolver(_schema_set(Path(tempfile.mkdtemp())))
    info = evolver._tables[TABLE]

    @settings(max_examples=300, deadline=None)
    @given(_images(), st.sampled_from([None, 1, 2, 3]))
    def check(image: dict[str, object], version: int | None) -> None:
        try:
            expected_version = version or evolver.detect_version(TABLE, image)
            expected = evolver._chain(info, dict(image), expected_version)
        except Exception as exc:  # noqa: BLE001 - the plan must fail the same way
            try:
                evolver.evolve_row(TABLE, dict(image), version)
            except Exception as again:  # noqa: BLE001
                assert type(again) is type(exc)
                return
            raise AssertionError(f"plan accepted what the chain refused: {exc}") from None
        first = evolver.evolve_row(TABLE, dict(image), version)
        second = evolver.evolve_row(TABLE, dict(image), version)  # from the cached plan
        assert first == expected == second
        if set(image) != set(info.current.fields):  # a current image comes back as it is
            assert list(first) == list(expected)  # else: the current version's field order
        if "tags" in first and "tags" not in image:
            assert first["tags"] is not second["tags"]  # a mutable default is never shared

    check()
