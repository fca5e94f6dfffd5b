"""`cdc verify --repair`'s order of work: every table is checked before anything is deleted,
and a backfill refused at the end leaves the other tables' backfills sent and says so."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.errors import ConfigError
from pipeline.verify import repair as repair_module
from pipeline.verify.compare import DIFFERING, EXTRA, MISSING, Drift, TableResult


class _Index:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete(self, index: str, doc_id: str, seq_no: int, term: int) -> bool:
        self.deleted.append(doc_id)
        return True

    def gc_deletes_s(self, index: str) -> float:
        return 0.0

    def refresh(self, index: str) -> None:
        pass


class _Filter:
    def __init__(self, keys: list[list[Any]]) -> None:
        self.keys = keys

    def as_string(self, _conn: Any) -> str:
        return repr(self.keys)


class _Rows:
    key_names = ("id",)
    conn = None


class _Settings:
    class elasticsearch:  # noqa: N801 - stands in for the settings' attribute
        @staticmethod
        def index_for(table: str) -> str:
            return f"ix-{table}"


def _result(table: str, drifts: int) -> TableResult:
    result = TableResult(table, f"ix-{table}")
    kinds = (MISSING, DIFFERING, EXTRA)
    result.drifts = [Drift(kinds[i % 3], f"{table}-{i}", {"id": i}, text_key=(str(i),),
                           seen=(i, 1)) for i in range(drifts)]
    return result


@pytest.fixture
def control(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state: dict[str, Any] = {"refuse": set(), "refuse_late": set(), "checked": [],
                             "sent": []}

    def check_start(settings: Any, tables: tuple[str, ...], where: str) -> None:
        state["checked"].append(tables[0])
        if tables[0] in state["refuse"] or (
                tables[0] in state["refuse_late"] and tables[0] in state["checked"][:-1]):
            raise ConfigError("cdc snapshot start", f"{tables[0]} is being backfilled")

    def send(settings: Any, signal: Any) -> str:
        state["sent"].append(signal.tables[0])
        return f"sig-{len(state['sent'])}"

    monkeypatch.setattr(repair_module.control, "check_start", check_start)
    monkeypatch.setattr(repair_module.control, "send", send)
    monkeypatch.setattr(repair_module, "key_filter", lambda names, keys: _Filter(keys))
    return state


def _run(results: list[TableResult], es: _Index) -> list[repair_module.TableRepair]:
    tables: Any = {r.table: _Rows() for r in results}
    return repair_module.repair(_Settings(), es, tables, results,  # type: ignore[arg-type]
                                lambda _line: None)


def test_a_table_with_too_much_drift_stops_the_repair_before_any_delete(
        control: dict[str, Any]) -> None:
    es = _Index()
    with pytest.raises(ConfigError, match="cdc snapshot start s.b"):
        _run([_result("s.a", 3), _result("s.b", repair_module.MAX_KEYS + 1)], es)
    assert es.deleted == [] and control["sent"] == []


def test_a_backfill_that_cannot_start_stops_the_repair_before_any_delete(
        control: dict[str, Any]) -> None:
    es = _Index()
    control["refuse"].add("s.b")
    with pytest.raises(ConfigError, match="s.b is being backfilled"):
        _run([_result("s.a", 3), _result("s.b", 3)], es)
    assert es.deleted == [] and control["sent"] == []


def test_a_backfill_refused_after_the_deletes_leaves_the_others_sent_and_says_so(
        control: dict[str, Any]) -> None:
    es = _Index()
    control["refuse_late"].add("s.a")
    done = _run([_result("s.a", 3), _result("s.b", 3)], es)
    assert sorted(es.deleted) == ["s.a-1", "s.a-2", "s.b-1", "s.b-2"]
    assert control["sent"] == ["s.b"]
    first, second = done
    assert first.signal is None and first.backfilled == 0
    assert first.error is not None and "2 key(s) not backfilled" in first.error
    assert "cdc verify --repair again" in first.error
    assert second.signal == "sig-1" and second.backfilled == 2 and second.error is None
