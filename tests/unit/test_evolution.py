"""Upcasting change events to the current schema version: version detection, chains, defaults,
the unchanged-TOAST placeholder, errors that dead-letter one event, loading user upcasters, and
the worker-facing stage for JSON and Avro records."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.errors import BadDataError, ConfigError
from pipeline.events import UNAVAILABLE_VALUE, ChangeEvent, SourceInfo, encode_key, encode_value
from pipeline.evolution import (
    EvolutionStage,
    Evolver,
    MissingUpcasterError,
    SchemaSet,
    UnknownSchemaVersionError,
    UpcasterLoadError,
    Upcasters,
    UpcastFailedError,
    load_upcasters,
)
from pipeline.evolution.examples import split_name
from pipeline.evolution.examples import upcasters as example_upcasters

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
SCHEMA_SET = SchemaSet.load(SCHEMAS)
CUSTOMERS = "public.customers"

V1 = {
    "id": 7,
    "name": "Ada King Lovelace",
    "email": "ada@example.com",
    "updated_at": "2024-05-01T10:00:00Z",
}
V2 = {
    "id": 7,
    "first_name": "Ada",
    "last_name": "King Lovelace",
    "email": "ada@example.com",
    "updated_at": "2024-05-01T10:00:00Z",
}
V3 = {**V2, "currency": "USD"}


def event(
    op: str = "c",
    after: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    table: str = "customers",
) -> ChangeEvent:
    row = after if after is not None else before
    key = {"id": row["id"]} if row else None
    source = SourceInfo(
        "postgresql",
        "demo",
        "shop",
        "public",
        table,
        1_714_557_600_000_000,
        tx_id=9,
        lsn=4000,
        commit_lsn=3900,
    )
    return ChangeEvent(op, key, before, after, source, 1_714_557_600_001)


@pytest.fixture
def evolver() -> Evolver:
    return Evolver(SCHEMA_SET, example_upcasters)


# -- version detection --------------------------------------------------------------------------
def test_exact_column_set_decides_the_version(evolver: Evolver) -> None:
    assert evolver.detect_version(CUSTOMERS, V1) == 1
    assert evolver.detect_version(CUSTOMERS, V2) == 2
    assert evolver.detect_version(CUSTOMERS, V3) == 3


def test_partial_image_is_read_as_the_newest_version_it_fits(evolver: Evolver) -> None:
    partial = {"id": 7, "email": None}  # in every version
    assert evolver.detect_version(CUSTOMERS, partial) == 3
    assert evolver.detect_version(CUSTOMERS, {"id": 7, "name": "Ada"}) == 1
    assert evolver.detect_version(CUSTOMERS, {"id": 7, "first_name": "Ada"}) == 3


def test_columns_of_no_version(evolver: Evolver) -> None:
    with pytest.raises(UnknownSchemaVersionError, match=r"closest v1 lacks \['nickname'\]") as info:
        evolver.evolve(event(after={**V1, "nickname": "A"}))
    assert info.value.stage == "evolution"
    assert info.value.table == CUSTOMERS
    with pytest.raises(UnknownSchemaVersionError):  # name (v1) and currency (v3) never together
        evolver.evolve(event(after={"id": 1, "name": "x", "currency": "EUR"}))


def test_explicit_version_must_exist(evolver: Evolver) -> None:
    with pytest.raises(UnknownSchemaVersionError, match="no schema version 9"):
        evolver.evolve(event(after=V1), version=9)


# -- chains --------------------------------------------------------------------------------------
def test_v1_goes_through_code_then_default_to_v3(evolver: Evolver) -> None:
    old = event("u", after=V1, before=V1)
    new = evolver.evolve(old)
    assert new.after == V3
    assert new.before == V3
    assert list(new.after) == ["id", "first_name", "last_name", "email", "updated_at", "currency"]
    assert (new.op, new.key, new.source, new.ts_ms) == (old.op, old.key, old.source, old.ts_ms)
    assert old.after == V1, "the original event is left alone"


def test_v2_needs_only_the_default(evolver: Evolver) -> None:
    assert evolver.evolve(event(after=V2)).after == V3


def test_explicit_version_overrides_detection(evolver: Evolver) -> None:
    # {id, email} would be detected as v3; said to be v2 it gets v2's and v3's defaults.
    assert evolver.evolve(event(after={"id": 3, "email": None}), version=2).after == {
        "id": 3,
        "email": None,
        "currency": "USD",
    }


def test_current_events_come_back_as_they_are(evolver: Evolver) -> None:
    current = event("u", after={**V3, "currency": "EUR"}, before={**V3, "currency": "EUR"})
    assert evolver.evolve(current) is current
    assert evolver.evolve(current, version=3) is current


def test_missing_default_is_filled_on_a_current_partial_image(evolver: Evolver) -> None:
    partial = {"id": 7, "first_name": "Ada", "last_name": "L", "updated_at": "t"}
    assert evolver.evolve(event(after=partial)).after == {
        **partial,
        "email": None,
        "currency": "USD",
    }


def test_unknown_tables_and_truncates_pass_through(evolver: Evolver) -> None:
    other = event(after={"id": 1, "anything": "goes"}, table="audit_log")
    assert evolver.evolve(other) is other
    truncate = ChangeEvent("t", None, None, None, event(after=V1).source)
    assert evolver.evolve(truncate) is truncate


def test_upcaster_may_mutate_its_argument_and_extra_fields_are_dropped() -> None:
    upcasters = Upcasters()

    @upcasters.register(CUSTOMERS, 1)
    def sloppy(row: dict[str, Any]) -> dict[str, Any]:
        row["first_name"], row["last_name"] = "A", "B"  # forgets to drop `name`
        return row

    row = dict(V1)
    after = Evolver(SCHEMA_SET, upcasters).evolve(event(after=row)).after
    assert after is not None
    assert "name" not in after
    assert (after["first_name"], after["currency"]) == ("A", "USD")
    assert row == V1


def test_registered_upcaster_for_an_additive_step_is_used() -> None:
    upcasters = Upcasters()
    upcasters.add(CUSTOMERS, 1, split_name)
    upcasters.add(CUSTOMERS, 2, lambda row: {**row, "currency": "EUR"})
    assert Evolver(SCHEMA_SET, upcasters).evolve(event(after=V1)).after == {**V3, "currency": "EUR"}


# -- errors that dead-letter one event -----------------------------------------------------------
def test_missing_step(evolver: Evolver) -> None:
    bare = Evolver(SCHEMA_SET)
    assert bare.missing_steps() == [
        "public.customers v1 -> v2: new field 'first_name' has no default"
    ]
    assert evolver.missing_steps() == []
    with pytest.raises(MissingUpcasterError) as info:
        bare.evolve(event(after=V1))
    error = info.value
    assert isinstance(error, BadDataError)
    assert error.stage == "evolution"
    assert (error.table, error.from_version, error.to_version) == (CUSTOMERS, 1, 2)
    assert str(error) == (
        "public.customers v1 -> v2: no upcaster registered, and new field 'first_name' has no "
        "default"
    )
    assert bare.evolve(event(after=V2)).after == V3, "additive steps still need no code"


def test_raising_upcaster() -> None:
    upcasters = Upcasters()

    @upcasters.register(CUSTOMERS, 1)
    def needs_a_space(row: dict[str, Any]) -> dict[str, Any]:
        first, last = row.pop("name").split(" ")
        return {**row, "first_name": first, "last_name": last}

    with pytest.raises(UpcastFailedError) as info:
        Evolver(SCHEMA_SET, upcasters).evolve(event(after=V1))
    error = info.value
    assert error.stage == "evolution"
    assert (error.table, error.from_version, error.to_version) == (CUSTOMERS, 1, 2)
    assert "public.customers v1 -> v2" in str(error)
    assert "needs_a_space raised ValueError: too many values to unpack" in str(error)
    assert isinstance(error.__cause__, ValueError)


def test_upcaster_returning_no_row() -> None:
    upcasters = Upcasters()
    upcasters.add(CUSTOMERS, 1, lambda row: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(UpcastFailedError, match="returned NoneType, not a row dict"):
        Evolver(SCHEMA_SET, upcasters).evolve(event(after=V1))


def test_upcasters_that_cannot_apply_are_configuration_errors() -> None:
    for table, version in ((CUSTOMERS, 3), ("public.nothing", 1)):
        upcasters = Upcasters()
        upcasters.add(table, version, split_name)
        with pytest.raises(UpcasterLoadError) as info:
            Evolver(SCHEMA_SET, upcasters)
        assert info.value.setting == "evolution.upcasters"


def test_registering_a_step_twice_is_refused() -> None:
    upcasters = Upcasters()
    upcasters.add(CUSTOMERS, 1, split_name)
    with pytest.raises(ValueError, match="already registered"):
        upcasters.add(CUSTOMERS, 1, split_name)
    with pytest.raises(ValueError, match="start at 1"):
        upcasters.add(CUSTOMERS, 0, split_name)


# -- the unchanged-TOAST placeholder and key-only images ----------------------------------------
def test_placeholder_survives_an_upcaster_that_does_not_touch_its_column() -> None:
    upcasters = Upcasters()

    @upcasters.register(CUSTOMERS, 1)
    def shouting(row: dict[str, Any]) -> dict[str, Any]:
        name = row.pop("name")
        return {**row, "email": str(row["email"]).upper(), "first_name": name, "last_name": ""}

    after = (
        Evolver(SCHEMA_SET, upcasters)
        .evolve(event("u", after={**V1, "email": UNAVAILABLE_VALUE}))
        .after
    )
    assert after is not None
    assert after["email"] == UNAVAILABLE_VALUE, "same column: placeholder restored"
    assert after["first_name"] == V1["name"]


def test_placeholder_in_a_split_column_stays_a_placeholder(evolver: Evolver) -> None:
    after = evolver.evolve(event("u", after={**V1, "name": UNAVAILABLE_VALUE})).after
    assert after == {**V3, "first_name": UNAVAILABLE_VALUE, "last_name": UNAVAILABLE_VALUE}


def test_key_only_before_image_is_reshaped_not_upcast(evolver: Evolver) -> None:
    key_only = {
        "id": 7,
        "name": None,
        "email": None,
        "updated_at": None,
    }  # delete, default identity
    deleted = evolver.evolve(event("d", before=key_only))
    assert deleted.before == {
        "id": 7,
        "first_name": None,
        "last_name": None,
        "email": None,
        "updated_at": None,
        "currency": None,
    }
    assert deleted.after is None
    bare = Evolver(SCHEMA_SET)  # no upcaster runs, so none is missing
    assert bare.evolve(event("d", before={"id": 7})).before == deleted.before


def test_full_before_image_of_a_delete_is_upcast(evolver: Evolver) -> None:
    assert evolver.evolve(event("d", before=V1)).before == V3


# -- example upcasters -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "first", "last"),
    [
        ("Ada Lovelace", "Ada", "Lovelace"),
        ("Plato", "Plato", ""),
        ("  Jean  Luc Picard ", "Jean", "Luc Picard"),
        (None, "", ""),
    ],
)
def test_split_name(name: str | None, first: str, last: str) -> None:
    assert split_name({"id": 1, "name": name}) == {"id": 1, "first_name": first, "last_name": last}


# -- loading the user's module -------------------------------------------------------------------
def test_load_by_module_and_by_attribute() -> None:
    assert load_upcasters("pipeline.evolution.examples") is example_upcasters
    assert load_upcasters("pipeline.evolution.examples:upcasters") is example_upcasters


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no.such.module_xyz", "cannot import 'no.such.module_xyz': ModuleNotFoundError"),
        ("pipeline.evolution.examples:nothing", "has no attribute 'nothing'"),
        ("pipeline.evolution.examples:split_name", "is a function, not an Upcasters registry"),
        ("not a path", "is not of the form package.module[:attribute]"),
    ],
)
def test_load_errors_name_the_setting(spec: str, message: str) -> None:
    with pytest.raises(UpcasterLoadError, match=re.escape(message)) as info:
        load_upcasters(spec)
    assert isinstance(info.value, ConfigError)
    assert str(info.value).startswith("configuration error in 'evolution.upcasters': ")


def test_module_that_raises_on_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_upcasters_mod.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UpcasterLoadError, match="RuntimeError: boom"):
        load_upcasters("broken_upcasters_mod")
    sys.modules.pop("broken_upcasters_mod", None)


# -- the worker-facing stage ---------------------------------------------------------------------
@pytest.fixture
def stage() -> EvolutionStage:
    return EvolutionStage.from_settings(SCHEMAS, "pipeline.evolution.examples")


def test_stage_evolves_json_records(stage: EvolutionStage) -> None:
    old = event("u", after=V1, before=V1)
    new = stage.decode(encode_key(old), encode_value(old))
    assert new is not None
    assert (new.before, new.after) == (V3, V3)
    assert (new.key, new.source, new.op) == (old.key, old.source, old.op)


def test_stage_reads_avro_of_every_version(stage: EvolutionStage) -> None:
    for version, row in ((1, V1), (2, V2), (3, V3)):
        old = event("c", after=row)
        new = stage.decode(encode_key(old), stage.wire.encode_event(old, version))
        assert new == event("c", after=V3), f"written as v{version}"


def test_stage_refuses_an_id_of_another_table(stage: EvolutionStage) -> None:
    old = event("c", after=V3)
    payload = stage.wire.encode_event(old)
    record = stage.wire.decode(payload).record
    record["source"]["table"] = "orders"
    with pytest.raises(BadDataError, match="schema id 103 belongs to public.customers"):
        stage.decode(encode_key(old), stage.wire.encode(103, record))


def test_stage_batch_keeps_going_past_bad_records(stage: EvolutionStage) -> None:
    class Raw:
        def __init__(self, key: bytes | None, value: bytes | None) -> None:
            self.key, self.value = key, value

    good = event(after=V2)
    unknown = event(after={**V1, "nickname": "x"})
    records = [
        Raw(encode_key(good), encode_value(good)),
        Raw(b'{"id": 7}', None),
        Raw(encode_key(unknown), encode_value(unknown)),
        Raw(b'{"id": 7}', b"\x00\x00\x00\x01\x00"),
        Raw(b'{"id": 7}', b"not json"),
    ]
    results = stage.decode_batch(records)
    assert isinstance(results[0], ChangeEvent) and results[0].after == V3
    assert results[1] is None
    assert isinstance(results[2], UnknownSchemaVersionError) and results[2].stage == "evolution"
    assert isinstance(results[3], BadDataError) and results[3].stage == "decode"
    assert isinstance(results[4], BadDataError) and results[4].stage == "decode"


def test_stage_refuses_avro_keys(stage: EvolutionStage) -> None:
    old = event(after=V3)
    with pytest.raises(BadDataError, match="Avro record keys are not supported"):
        stage.decode(b"\x00\x00\x00\x00\x65\x0e", stage.wire.encode_event(old))
    assert orjson.loads(encode_key(old) or b"") == {"id": 7}
