"""The schema folder: loading, versions, ids, envelope, and errors that name the broken file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.errors import BadDataError, ConfigError
from pipeline.evolution import (
    SchemaFolderError,
    SchemaSet,
    UnknownSchemaIdError,
    UnknownSchemaVersionError,
    envelope_schema,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.fixture(scope="module")
def schema_set() -> SchemaSet:
    return SchemaSet.load(SCHEMAS)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return Path(shutil.copytree(SCHEMAS, tmp_path / "schemas"))


def test_shipped_folder_has_the_demo_tables_and_versions(schema_set: SchemaSet) -> None:
    assert set(schema_set.tables) == {"public.customers", "public.products", "public.orders"}
    assert schema_set.versions("public.customers") == (1, 2, 3)
    assert schema_set.current_version("public.customers") == 3
    assert schema_set.current_version("public.products") == 1
    assert schema_set.get("public.customers", 1).fields == ("id", "name", "email", "updated_at")
    assert schema_set.current("public.products").fields == (
        "id",
        "sku",
        "name",
        "price",
        "tags",
        "description",
    )
    assert schema_set.current("public.orders").field_types["total"] == "string"


def test_ids_map_both_ways(schema_set: SchemaSet) -> None:
    assert schema_set.schema_id("public.customers", 1) == 101
    assert schema_set.schema_id("public.customers", 3) == 103
    assert schema_set.schema_id("public.orders", 1) == 301
    tv = schema_set.by_id(102)
    assert (tv.table, tv.version) == ("public.customers", 2)
    ids = [tv.schema_id for tv in schema_set]
    assert len(ids) == len(set(ids)) == 5


def test_unknown_id_and_version_are_bad_data(schema_set: SchemaSet) -> None:
    with pytest.raises(UnknownSchemaIdError, match="schema id 999"):
        schema_set.by_id(999)
    with pytest.raises(UnknownSchemaVersionError, match="public.customers has no schema version 7"):
        schema_set.get("public.customers", 7)
    assert issubclass(UnknownSchemaIdError, BadDataError)


def test_defaults_are_fresh_copies(schema_set: SchemaSet) -> None:
    assert schema_set.current("public.customers").defaults() == {"email": None, "currency": "USD"}
    products = schema_set.current("public.products")
    products.defaults()["tags"].append("x")
    assert products.defaults()["tags"] == []


def test_which_steps_need_code(schema_set: SchemaSet) -> None:
    assert (
        schema_set.upcaster_needed("public.customers", 1) == "new field 'first_name' has no default"
    )
    assert schema_set.upcaster_needed("public.customers", 2) is None


def test_envelope_embeds_the_row_record_once(schema_set: SchemaSet) -> None:
    row = schema_set.get("public.customers", 2).row_schema
    template = json.loads((SCHEMAS / "envelope.avsc").read_text())
    envelope = envelope_schema(template, row)
    assert envelope["name"] == "Envelope"
    assert envelope["namespace"] == "public.customers"
    fields = {f["name"]: f["type"] for f in envelope["fields"]}
    assert fields["before"] == ["null", row]
    assert fields["after"] == ["null", "public.customers.Value"]
    assert {"source", "op", "ts_ms", "transaction"} <= fields.keys()
    assert template["fields"][0]["type"] == ["null", "Value"], "template left untouched"


def _problem(folder: Path) -> SchemaFolderError:
    with pytest.raises(SchemaFolderError) as info:
        SchemaSet.load(folder)
    assert isinstance(info.value, ConfigError)
    assert info.value.setting == "evolution.schemas_dir"
    return info.value


def test_invalid_json_names_the_file(folder: Path) -> None:
    (folder / "public.orders" / "v1.avsc").write_text("{not json")
    error = _problem(folder)
    assert "public.orders/v1.avsc" in str(error)
    assert "not readable JSON" in str(error)


def test_invalid_avro_names_the_file(folder: Path) -> None:
    path = folder / "public.products" / "v1.avsc"
    doc = json.loads(path.read_text())
    doc["fields"][0]["type"] = "integer"
    path.write_text(json.dumps(doc))
    error = _problem(folder)
    assert "public.products/v1.avsc" in str(error)
    assert "not a valid Avro schema" in str(error)


def test_version_without_id(folder: Path) -> None:
    shutil.copy(folder / "public.orders" / "v1.avsc", folder / "public.orders" / "v2.avsc")
    error = _problem(folder)
    assert "public.orders/v2.avsc" in str(error)
    assert "no schema id in ids.yaml" in str(error)


def test_id_without_schema(folder: Path) -> None:
    with (folder / "ids.yaml").open("a") as ids:
        ids.write("public.gone:\n  1: 901\n")
    error = _problem(folder)
    assert "ids.yaml" in str(error)
    assert "public.gone v1" in str(error)


def test_duplicate_id(folder: Path) -> None:
    text = (folder / "ids.yaml").read_text().replace("1: 301", "1: 101")
    (folder / "ids.yaml").write_text(text)
    assert "id 101 given to public.customers v1 and public.orders v1" in str(_problem(folder))


def test_gap_in_versions(folder: Path) -> None:
    (folder / "public.customers" / "v2.avsc").unlink()
    assert "versions must run 1..N without gaps, got [1, 3]" in str(_problem(folder))


def test_badly_named_files_and_folders(folder: Path) -> None:
    (folder / "public.orders" / "latest.avsc").write_text("{}")
    assert "must be named v<N>.avsc" in str(_problem(folder))
    (folder / "public.orders" / "latest.avsc").unlink()
    (folder / "customers").mkdir()
    assert "must be named <schema>.<table>" in str(_problem(folder))


def test_missing_folder_and_envelope(tmp_path: Path, folder: Path) -> None:
    assert "is not a directory" in str(_problem(tmp_path / "nowhere"))
    (folder / "envelope.avsc").unlink()
    assert "envelope.avsc" in str(_problem(folder))
