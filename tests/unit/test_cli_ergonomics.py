"""The CLI behaves like the tools users know: --version, `cdc stack` as a group, every
configuration problem listed with a did-you-mean, unknown sink keys refused."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from pipeline.cli import main
from pipeline.config import load_settings
from pipeline.errors import ConfigError
from pipeline.sinks.registry import build_configured


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("cdc ")


def test_stack_is_a_group_with_the_same_help_style() -> None:
    result = CliRunner().invoke(main, ["stack", "--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status", "env", "start", "stop"):
        assert command in result.output
    assert "python -m pipeline.stack" not in result.output
    wrong = CliRunner().invoke(main, ["stack", "start", "postgress"])
    assert wrong.exit_code == 2 and "is not one of" in wrong.output


def test_every_configuration_problem_is_listed_with_a_did_you_mean() -> None:
    env = {"CDC_POSTGRES__TABELS": "[public.x]", "CDC_KAFKA__PARTITIONS": "0",
           "CDC_ELASTICSEARCH__URLL": "http://x"}
    with pytest.raises(ConfigError) as info:
        load_settings(None, env)
    text = str(info.value)
    assert "'postgres.tables': is required" in text
    assert "did you mean 'postgres.tables'?" in text
    assert "'kafka.partitions'" in text
    assert "did you mean 'elasticsearch.url'?" in text


class _LaxSink:
    class Settings(BaseModel):  # pydantic's default would silently ignore extra keys
        table: str

    def __init__(self, name: str, settings: BaseModel) -> None:
        self.name, self.settings = name, settings

    async def write(self, batch: object) -> list[object]:
        return []


def test_custom_sink_settings_refuse_unknown_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("lax_sinks")
    module.LaxSink = _LaxSink  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lax_sinks", module)
    env = {"CDC_POSTGRES__TABLES": "[public.x]", "CDC_SINKS__AUDIT__TYPE": "lax_sinks:LaxSink",
           "CDC_SINKS__AUDIT__TABEL": "audit"}
    with pytest.raises(ConfigError) as info:
        build_configured(load_settings(None, env))
    assert info.value.setting == "sinks.audit.tabel"
    assert "did you mean 'sinks.audit.table'?" in info.value.problem


def test_stack_exports_do_not_switch_on_a_sink_the_config_leaves_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pipeline.stack as stack

    info = stack.StackInfo("host=x", "k:1", "redis://r:1/0", "http://e:1", tmp_path)
    monkeypatch.setattr(stack, "load", lambda: info)
    config = tmp_path / "cdc.yaml"
    config.write_text("postgres:\n  tables: [public.x]\nredis:\n  channel: c\n")
    monkeypatch.setenv("CDC_CONFIG", str(config))
    out = CliRunner().invoke(main, ["stack", "env"]).output
    assert "export CDC_REDIS__URL='redis://r:1/0'" in out
    assert "export CDC_ELASTICSEARCH__URL" not in out
    assert "# CDC_ELASTICSEARCH__URL not exported" in out
    monkeypatch.delenv("CDC_CONFIG")
    assert "export CDC_ELASTICSEARCH__URL" in CliRunner().invoke(main, ["stack", "env"]).output
