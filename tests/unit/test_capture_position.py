"""`cdc capture position`: moving a capture's position on purpose (no server needed for
what is refused before connecting, nor for what is said)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pipeline.capture.reposition import SlotPosition, plan_set, render_reset, render_set
from pipeline.cli import main
from pipeline.config import load_settings
from pipeline.errors import CdcError, ConfigError
from pipeline.positions import Lsn


def _settings(tmp_path, extra: str = ""):  # type: ignore[no-untyped-def]
    path = tmp_path / "cdc.yaml"
    path.write_text("postgres:\n  tables: [shop.items]\n  slot: shop_slot\n"
                    "  dsn: 'host=127.0.0.1 port=1 dbname=none'\n"
                    "kafka:\n  bootstrap_servers: '127.0.0.1:1'\n" + extra)
    return load_settings(path, {})


def test_set_is_for_a_slot_and_says_what_to_use_otherwise(tmp_path) -> None:
    with pytest.raises(ConfigError, match="position reset"):
        plan_set(_settings(tmp_path, "capture:\n  source: polling\n"), "0/10")


def test_set_refuses_what_is_not_an_lsn_before_connecting(tmp_path) -> None:
    with pytest.raises(CdcError, match="not an LSN"):
        plan_set(_settings(tmp_path), "yesterday")


def test_the_dry_run_says_how_much_wal_is_skipped(tmp_path) -> None:
    slot = SlotPosition(Lsn.parse("0/1000"), Lsn.parse("0/F00"), Lsn.parse("0/3000"), None)
    text = render_set(_settings(tmp_path), slot, Lsn.parse("0/2000"), done=False)
    assert text.startswith("would advance slot shop_slot from 0/1000 to 0/2000, skipping "
                           "4096 bytes of WAL")
    assert "not published" in text


def test_reset_names_the_slot_it_drops(tmp_path, monkeypatch) -> None:
    import pipeline.capture.reposition as reposition

    class _Named:
        name = "postgres slot shop_slot"

    monkeypatch.setattr(reposition, "_source", lambda _s: _Named())
    slot = SlotPosition(Lsn.parse("0/1000"), None, Lsn.parse("0/3000"), None)
    assert render_reset(_settings(tmp_path), slot, done=True).splitlines() == [
        "forgot the positions kept in Kafka for postgres slot shop_slot",
        "dropped slot shop_slot (confirmed 0/1000): the next capture creates a new one "
        "(snapshot_mode initial)"]


def test_capture_still_runs_alone_and_its_reset_flag_is_not_mixed_with_position() -> None:
    result = CliRunner().invoke(main, ["capture", "--reset-position", "position", "show"])
    assert result.exit_code == 2 and "capture position reset" in result.output
    listed = CliRunner().invoke(main, ["capture", "--help"])
    assert "position" in listed.output and "--reset-position" in listed.output
