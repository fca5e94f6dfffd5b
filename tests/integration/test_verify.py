"""`cdc verify` against real PostgreSQL, Kafka and Elasticsearch: drift planted by hand is
found exactly, `--repair` fixes it through the pipeline, rows changed while verifying are
not reported, and setup problems get a clear message and their own exit code."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg2
import pytest

from pipeline.errors import EXIT_NOT_INDEXED, EXIT_UNAVAILABLE
from pipeline.harness import wait_until
from pipeline.sources.postgres.backfill_control import load_state
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration

ROWS = 3_000


def _cdc(sc: Scenario, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args],
                          env={**os.environ, **sc.env, **(env or {})}, capture_output=True,
                          text=True, timeout=300, check=False)


def _verify(sc: Scenario, report: Path, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                               dict[str, Any]]:
    done = _cdc(sc, "verify", "--json", str(report), "--recheck-delay", "2", *args)
    report.with_suffix(".out").write_text(done.stdout + done.stderr)  # kept for a reader
    assert "Traceback" not in done.stderr, done.stderr
    table = orjson.loads(report.read_bytes())["tables"][0] if report.exists() else {}
    return done, table


def _drifts(table: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    return {d["id"]: (d["kind"], d.get("columns", [])) for d in table["drifts"]}


def _backfills_done(sc: Scenario) -> bool:
    tables = load_state(sc.settings).get("tables", [])
    return bool(tables) and all(t.get("state") == "done" for t in tables)


def _running_pipeline(sc: Scenario) -> httpx.Client:
    sc.execute("INSERT INTO items SELECT g, 'item ' || g, g, g * 1.25, 'n' "
               "FROM generate_series(1, %s) g", ROWS)
    sc.env["CDC_WORKER__ENGINE"] = "kafka"
    sc.start("capture")
    sc.start("worker")
    assert sc.converged(120), sc.processes["worker"].tail()
    es = httpx.Client(base_url=sc.es_url, timeout=30)
    # Tombstones refuse a backfilled row (version 0) this long; the default is 60 s.
    assert es.put(f"/{sc.index}/_settings", json={"index.gc_deletes": "1s"}).status_code == 200
    return es


def test_planted_drift_is_found_exactly_and_repaired_through_the_pipeline(
        scenario: Scenario, tmp_path: Path) -> None:
    sc = scenario
    es = _running_pipeline(sc)
    clean, table = _verify(sc, tmp_path / "clean.json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert table["rows"] == ROWS and table["documents"] == ROWS and not table["drifts"]

    # Drift planted by hand, behind the pipeline's back.
    assert es.delete(f"/{sc.index}/_doc/5").status_code == 200
    assert es.post(f"/{sc.index}/_update/7",
                   json={"doc": {"name": "tampered", "qty": -1}}).status_code == 200
    assert es.put(f"/{sc.index}/_doc/99999",
                  json={"id": 99999, "name": "ghost", "qty": 0}).status_code in (200, 201)
    assert es.put(f"/{sc.index}/_doc/foreign", json={"other": "shape"}).status_code in (200, 201)
    # A key no row of the table can have (out of range for int): extra, not an error.
    assert es.put(f"/{sc.index}/_doc/huge",
                  json={"id": 99_999_999_999_999}).status_code in (200, 201)
    es.post(f"/{sc.index}/_refresh")

    drifted, table = _verify(sc, tmp_path / "drift.json")
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert _drifts(table) == {"5": ("missing", []), "7": ("differing", ["name", "qty"]),
                              "99999": ("extra", []), "foreign": ("extra", []),
                              "huge": ("extra", [])}
    assert "verdict: 5 document(s) drifted" in drifted.stdout
    assert "differing  id=7  columns: name, qty" in drifted.stdout

    repaired, _ = _verify(sc, tmp_path / "repair.json", "--repair")
    assert repaired.returncode == 1, repaired.stdout + repaired.stderr  # it found drift
    assert "4 deleted, 2 backfilled" in repaired.stdout, repaired.stdout
    assert wait_until(lambda: _backfills_done(sc), 120, 0.5), sc.processes["capture"].tail()
    assert sc.converged(60), sc.processes["worker"].tail()

    again, table = _verify(sc, tmp_path / "again.json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert not table["drifts"] and table["documents"] == ROWS
    assert es.get(f"/{sc.index}/_doc/7").json()["_source"]["name"] == "item 7"
    es.close()


class _Writer(threading.Thread):
    """Updates, deletes and re-inserts random keys until stopped."""

    def __init__(self, sc: Scenario) -> None:
        super().__init__(daemon=True)
        self.sc = sc
        self.stop = threading.Event()
        self.changes = 0

    def run(self) -> None:
        conn = psycopg2.connect(self.sc.dsn)
        rnd = random.Random(11)
        table = self.sc.table_id
        while not self.stop.is_set():
            ids = [rnd.randint(1, ROWS) for _ in range(10)]
            with conn, conn.cursor() as cur:
                cur.execute(f"UPDATE {table} SET qty = qty + 1, name = 'upd ' || id "
                            "WHERE id = ANY(%s)", (ids,))
                cur.execute(f"DELETE FROM {table} WHERE id = %s", (ids[0],))
                cur.execute(f"INSERT INTO {table} VALUES (%s, 'back', 1, 1, 'n') "
                            "ON CONFLICT DO NOTHING", (ids[1],))
            self.changes += 1
            time.sleep(0.005)
        conn.close()


def test_rows_changed_while_verifying_are_not_drift(scenario: Scenario, tmp_path: Path
                                                    ) -> None:
    sc = scenario
    _running_pipeline(sc).close()
    writer = _Writer(sc)
    report = tmp_path / "busy.json"
    verify = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "verify", "--json", str(report),
         "--chunk-size", "200", "--rate", "1000", "--recheck-delay", "3"],
        env={**os.environ, **sc.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    writer.start()
    # Change rows while the verify reads them: from the moment it starts on the table (its
    # progress bar's label, printed once on a pipe) through most of the row pass (~3 s at
    # 1000 rows/s), however long its own start took on a loaded machine.
    assert verify.stderr is not None
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(verify.stderr or []),
                              daemon=True)
    reader.start()
    assert wait_until(lambda: any(sc.table_id in line for line in err_lines), 60, 0.1), \
        err_lines
    time.sleep(2.5)
    writer.stop.set()
    writer.join()
    out = verify.stdout.read() if verify.stdout else ""
    verify.wait(timeout=120)
    reader.join(timeout=10)
    err = "".join(err_lines)
    assert writer.changes > 50
    assert verify.returncode == 0, out + err
    table = orjson.loads(report.read_bytes())["tables"][0]
    assert not table["drifts"]
    assert table["settled"] > 0, "no row changed under the verify: the test proves nothing"


def test_setup_problems_get_a_message_and_their_own_exit_code(scenario: Scenario) -> None:
    sc = scenario
    no_index = _cdc(sc, "verify")
    assert no_index.returncode == EXIT_NOT_INDEXED, no_index.stdout + no_index.stderr
    assert "has no index yet" in no_index.stderr and "Traceback" not in no_index.stderr
    down = _cdc(sc, "verify", env={"CDC_ELASTICSEARCH__URL": "http://127.0.0.1:9"})
    assert down.returncode == EXIT_UNAVAILABLE, down.stdout + down.stderr
    assert "unreachable" in down.stderr and "Traceback" not in down.stderr
    other = _cdc(sc, "verify", "--table", "public.nope")
    assert other.returncode == 2 and "not captured" in other.stderr


def test_repair_filters_select_exactly_the_keys_quotes_and_composite_keys_included(
        scenario: Scenario) -> None:
    from psycopg2 import sql

    from pipeline.verify.database import TableRows, key_filter

    sc = scenario
    sc.execute("CREATE TABLE items_pair (a text, b int, v text, PRIMARY KEY (a, b))")
    table = f"{sc.schema}.items_pair"
    sc.execute("INSERT INTO items_pair VALUES ('O''Brien', 1, 'x'), ('O''Brien', 2, 'y'), "
               "('plain', 1, 'z'), ('x) OR (true', 1, 'w')")
    db = TableRows(sc.settings.postgres, table)
    try:
        keys = [["O'Brien", "2"], ["x) OR (true", "1"], ["absent", "1"]]
        where = key_filter(db.key_names, keys).as_string(db.conn)
        assert where == ('("a" = \'O\'\'Brien\' AND "b" = \'2\') OR '
                         '("a" = \'x) OR (true\' AND "b" = \'1\') OR '
                         '("a" = \'absent\' AND "b" = \'1\')')
        found = db.by_keys(keys)
        assert sorted(found) == ['["O\'Brien",2]', '["x) OR (true",1]']
        rows, after = db.chunk(None, 2)
        assert [r[2] for r in rows.values()] == [("O'Brien", "1"), ("O'Brien", "2")]
        assert after == ["O'Brien", "2"]
        with db.conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                sql.Identifier(sc.schema, "items_pair"), sql.SQL(where)))
            assert cur.fetchone()[0] == 2
    finally:
        db.close()


#: Key types whose published form is not PostgreSQL's text, each with hostile values.
KEYED_TABLES = {
    "k_bool": ("boolean", ["true", "false"]),
    "k_bytea": ("bytea", ["'\\x00'", "'\\x'", "'\\xdeadbeef'", "decode(repeat('ff', 200), 'hex')"]),
    "k_fixed": ("numeric(12,2)", ["-0.50", "0", "9999999999.99"]),
    "k_free": ("numeric", ["1e-30", "123456789012345678901234567890.000001", "-7"]),
    "k_float": ("float8", ["'-Infinity'", "0.1", "1e300", "-0"]),
    "k_tstz": ("timestamptz", ["'2024-01-02 03:04:05.123456+05:30'", "'infinity'",
                               "'0044-03-15 12:00+00 BC'"]),
    "k_bit": ("bit(1)", ["B'0'", "B'1'"]),
    "k_text": ("text", ["''", "'\U0001f600 O''Brien'", "repeat('x', 600)"]),
}


def test_every_key_type_finds_its_row_so_nothing_live_is_extra(scenario: Scenario) -> None:
    """Documents written exactly as the sink writes them (the rows as capture publishes them,
    ``precise`` decimals) for keys of every type whose published form is not PostgreSQL's
    text: verify finds each document's row, so only the planted ghost is extra; a table
    whose key is published as a double is unchecked, not extra, and a repair leaves it be."""
    from pipeline.sinks.search import document_id
    from pipeline.verify.database import TableRows
    from pipeline.verify.index import SearchIndex
    from pipeline.verify.run import Options, verify_table

    sc = scenario
    assert sc.settings.elasticsearch is not None
    es = httpx.Client(base_url=sc.es_url, timeout=30)
    search = SearchIndex(sc.settings.elasticsearch)
    for mode in ("precise", "double"):
        pg = sc.settings.postgres.model_copy(update={"decimal_handling_mode": mode})
        for name, (column_type, values) in KEYED_TABLES.items():
            if mode == "double" and name != "k_fixed":
                continue
            table = f"{name}_{mode}"
            qualified = f"{sc.schema}.{table}"
            sc.execute(f"CREATE TABLE {qualified} (k {column_type} PRIMARY KEY, v text)")
            sc.execute(f"INSERT INTO {qualified} VALUES "
                       + ", ".join(f"({value}, 'v')" for value in values))
            db = TableRows(pg, qualified)
            index = f"verify-keys-{sc.uid}-{table}"
            try:
                rows, _ = db.chunk(None, 100)
                assert len(rows) == len(values)
                lines = []
                for doc_id, (key, row, _text) in rows.items():
                    assert doc_id == document_id(key)
                    lines += [orjson.dumps({"index": {"_index": index, "_id": doc_id}}),
                              orjson.dumps(row)]
                ghost = {"k": next(iter(rows.values()))[1]["k"], "v": "ghost"}
                lines += [orjson.dumps({"index": {"_index": index, "_id": "ghost"}}),
                          orjson.dumps(ghost)]
                bulk = es.post("/_bulk?refresh=true", content=b"\n".join(lines) + b"\n",
                               headers={"content-type": "application/x-ndjson"})
                assert bulk.status_code == 200 and not bulk.json()["errors"], bulk.text
                result = verify_table(db, search, index, Options(recheck_delay_s=0))
                assert result.rows == len(values) and result.documents == len(values) + 1
                if mode == "double":
                    assert not result.drifts, (table, result.drifts)
                    assert result.unchecked == len(values) + 1
                    assert "k is a numeric" in result.unchecked_because
                else:
                    assert [(d.kind, d.doc_id) for d in result.drifts] == [("extra", "ghost")], (
                        table, result.drifts)
                    assert result.unchecked == 0
            finally:
                db.close()
    search.close()
    es.close()
