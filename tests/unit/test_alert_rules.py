"""The shipped Prometheus alert rules name only metrics the code emits, in the form the
exporter writes them (histograms as ``<name>_seconds_bucket``)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "prometheus" / "cdc-alerts.yml"


def _sources() -> str:
    return "\n".join(p.read_text() for folder in ("pipeline", "agents")
                     for p in sorted((ROOT / folder).rglob("*.py")))


def _rules() -> list[dict[str, object]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_rule_is_complete() -> None:
    rules = _rules()
    assert len(rules) >= 8
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["expr"], rule
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule  # type: ignore[index]
        assert rule["annotations"]["summary"], rule  # type: ignore[index]


def test_every_metric_named_in_a_rule_is_emitted() -> None:
    source = _sources()
    emitted = set(re.findall(r'"(cdc_[a-z_]+)"', source))
    histograms = set(re.findall(r'observe(?:_many)?_ms\(\s*"(cdc_[a-z_]+)"', source))
    assert histograms, "no histogram found: the scan is broken"
    for rule in _rules():
        for name in re.findall(r"\bcdc_[a-z_]+", str(rule["expr"])):
            base = name.removesuffix("_seconds_bucket")
            if base != name:
                assert base in histograms, f"{rule['alert']}: {base} is not a histogram"
            else:
                assert name not in histograms, f"{rule['alert']}: use {name}_seconds_bucket"
            assert base in emitted, f"{rule['alert']}: no code emits {base}"
